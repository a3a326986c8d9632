"""Sharded evaluation over a whole split, and the per-layer sparsity records measured there.

:func:`eval_sums` runs a jitted ``eval_step(batch, mask) -> sums`` on global batches made of every
process's part of a split (fixed-shape batches, the last padded and masked; every process runs the
same number of steps) and adds the results up in float64. :func:`record_sums` (inside the step) and
:func:`mean_records` (on the host) turn the ``sparsity`` records a model sowed into the
``sparsity/<layer>/<stat>`` entries of an evaluation row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    out = parallel.to_host(eval_step(*parallel.put_batch((batch, mask), mesh)))
    out = jax.tree.map(lambda v: np.asarray(v, np.float64), out)
    total = out if total is None else jax.tree.map(np.add, total, out)
  return total


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
