"""A finished run's results: one final row in ``metrics.jsonl`` and ``results.json`` beside it."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from train.common import metrics


def write(
  workdir: str,
  step: int,
  row: dict[str, Any],
  results: dict[str, Any],
  config: ml_collections.ConfigDict,
  history: list[dict[str, Any]],
) -> None:
  """Append ``row`` at ``step`` to ``metrics.jsonl``; write ``results.json`` (results, config, history).

  Only process 0 writes. Non-finite numbers are written as JSON's ``Infinity`` / ``NaN``.

  Args:
    workdir: the run's folder.
    step: the step of the final row (the steps trained).
    row: the final row's entries (e.g. ``{"epoch": 5, "test/ppl": 81.2}``).
    results: the numbers of ``results.json``.
    config: the run's config (stored with them).
    history: the evaluation rows (stored with them).
  """
  if jax.process_index() != 0:
    return
  writer = metrics.MetricsWriter(workdir)
  writer.write(step, row)
  writer.close()
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(dict(results, config=config.to_dict(), history=history), f, indent=1, default=str)
