"""Evaluation over a whole split as float64 sums of a jitted step, and the sparsity records measured there.

Two ways through a split, one way of adding up. :func:`eval_sums` runs a jitted
``eval_step(batch, mask) -> sums`` on global batches made of every process's part of a split
(fixed-shape batches, the last padded and masked; every process runs the same number of steps).
:func:`carried_sums` runs ``eval_step(carry, window) -> (sums, carry)`` on windows in order, each
starting from the state the one before left (a recurrent model reading long streams). Both add the
sums up on the host in float64. :func:`record_sums` (inside the step) and
:func:`mean_records` (on the host) turn the ``sparsity`` records a model sowed into the
``sparsity/<layer>/<stat>`` entries of an evaluation row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import sparseout_jax
from train.common import data, parallel


def eval_sums(
  eval_step: Callable[[Any, Any], Any],
  arrays: Mapping[str, np.ndarray],
  batch_size: int,
  mesh: Mesh,
  prepare: Callable[[dict], dict] | None = None,
) -> Any:
  """Sum ``eval_step``'s outputs over every row of ``arrays`` (each process its slice).

  Args:
    eval_step: jitted ``(batch, mask) -> pytree of sums over the global batch``.
    arrays: the split, name -> array with a common leading length.
    batch_size: rows per batch on this process (divisible by the local devices).
    mesh: the mesh the batches are split over.
    prepare: optional host-side transform of each batch (e.g. image normalisation).

  Returns:
    The pytree of sums, float64 numpy leaves.
  """
  n = len(next(iter(arrays.values())))
  part = {k: v[data.process_slice(n)] for k, v in arrays.items()}
  total = None
  batches = data.iterate_eval(part, batch_size, num_batches=data.eval_num_batches(n, batch_size))
  for batch, mask in batches:
    batch = prepare(batch) if prepare is not None else batch
    total = _add(total, eval_step(*parallel.put_batch((batch, mask), mesh)))
  return total


def carried_sums(
  eval_step: Callable[[Any, Any], tuple[Any, Any]], windows: Iterable[Any], carry: Any
) -> Any:
  """Sum ``eval_step``'s outputs over ``windows`` in order, carrying a state from window to window.

  With windows w_1 .. w_n and carry c_0, ``(s_i, c_i) = eval_step(c_{i-1}, w_i)`` and the result is
  sum_i s_i (float64, added in window order). For a recurrent model that reads long streams in
  fixed windows, the state at a window's end being the next window's start.

  Args:
    eval_step: jitted ``(carry, window) -> (pytree of sums, new carry)``.
    windows: the windows in stream order (any pytrees ``eval_step`` takes).
    carry: the state before the first window.

  Returns:
    The pytree of sums, float64 numpy leaves (None for no windows).

  Example:
    >>> step = lambda c, w: ({"sum": c + w}, c + w)  # the running total, summed
    >>> float(carried_sums(step, [1.0, 2.0, 3.0], 0.0)["sum"])  # 1 + 3 + 6
    10.0
  """
  total = None
  for window in windows:
    out, carry = eval_step(carry, window)
    total = _add(total, out)
  return total


def _add(total: Any, out: Any) -> Any:
  """``total + out`` leaf by leaf in float64 on the host (``out`` a step's device sums)."""
  out = jax.tree.map(lambda v: np.asarray(v, np.float64), parallel.to_host(out))
  return out if total is None else jax.tree.map(np.add, total, out)


def record_sums(records: Any, mask: jax.Array) -> dict[str, jax.Array]:
  """A global batch's per-layer sparsity records, weighted by its real rows.

  A record is a mean over the whole batch, padding rows included, so only batches without padding
  count: each record is weighted by the batch's row count where every row is real (0 otherwise),
  and ``"count"`` carries the weights. Use inside the jitted eval step.

  Args:
    records: what ``nnx.capture(model, nnx.Intermediate)`` returned (or the model itself).
    mask: the batch's row mask (1 real, 0 padding).
  """
  full = jnp.all(mask > 0).astype(jnp.float32) * jnp.sum(mask)
  flat = {
    f"{path}/{k}": v * full
    for path, rec in sparseout_jax.sparsity_records(records).items()
    for k, v in rec.items()
  }
  return {**flat, "count": full}


def mean_records(sums: Mapping[str, Any]) -> dict[str, float]:
  """``{"sparsity/<layer>/<stat>": mean}`` from :func:`record_sums` added up over batches.

  Example:
    >>> mean_records({"block/hoyer": 3.0, "count": 4.0})
    {'sparsity/block/hoyer': 0.75}
  """
  count = float(sums.get("count", 0.0))
  return {f"sparsity/{k}": float(v) / count for k, v in sums.items() if k != "count" and count > 0}
