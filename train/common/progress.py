"""tqdm progress bars shown on process 0 only (set ``TQDM_DISABLE=1`` to silence them)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import jax
from tqdm.auto import tqdm


def progress_bar(
  iterable: Iterable | None = None,
  *,
  total: int | None = None,
  desc: str | None = None,
  initial: int = 0,
  unit: str = "step",
  leave: bool = True,
  disable: bool | None = None,
) -> tqdm:
  """Return a tqdm bar; disabled on processes other than 0 or when ``TQDM_DISABLE`` is set.

  Args:
    iterable: optional iterable to wrap.
    total: number of expected iterations.
    desc: label shown left of the bar.
    initial: starting count (e.g. the resumed step).
    unit: name of one iteration.
    leave: keep the bar on screen when done.
    disable: force on/off; default as described above.

  Returns:
    The tqdm object (use ``.update(n)``, ``.set_postfix(...)``, ``.close()``).
  """
  if disable is None:
    disable = jax.process_index() != 0 or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
  return tqdm(
    iterable,
    total=total,
    desc=desc,
    initial=initial,
    unit=unit,
    leave=leave,
    disable=disable,
    dynamic_ncols=True,
  )
