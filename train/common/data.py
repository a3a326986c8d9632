"""Per-process data sharding with a reproducible, resumable global batch order.

The global order depends only on ``(seed, epoch)``: ``np.random.default_rng([seed, epoch])``
permutes the example indices, global batch ``s`` is the slice ``[s*B, (s+1)*B)`` of that permutation
(remainder dropped), sorted, and process ``p`` of ``P`` reads the contiguous ``B/P`` piece ``p`` of it.
So the global batch, and which examples each device of the job gets, are the same for 1 process x 4
devices and 2 processes x 2 devices, and a run resumed at ``(epoch, step)`` sees exactly the batches
it would have seen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping

import jax
import numpy as np


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """Permutation of ``range(num_examples)`` for one epoch, a pure function of ``(seed, epoch)``."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Number of full global batches in an epoch (the remainder is dropped).

  Raises:
    ValueError: fewer examples than one global batch.
  """
  steps = num_examples // global_batch_size
  if steps == 0:
    raise ValueError(f"global_batch_size {global_batch_size} exceeds the {num_examples} examples")
  return steps


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  return (
    jax.process_index() if process_index is None else process_index,
    jax.process_count() if process_count is None else process_count,
  )


def iterate_epoch(
  arrays: Mapping[str, np.ndarray],
  global_batch_size: int,
  seed: int,
  epoch: int,
  *,
  start_step: int = 0,
  shuffle: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Yield this process's part of each global batch of one epoch, from ``start_step`` on.

  Args:
    arrays: name -> array, all with the same leading length N.
    global_batch_size: batch size summed over all processes and devices.
    seed: data-order seed.
    epoch: epoch number (the order changes per epoch).
    start_step: first step within the epoch (resume position).
    shuffle: permute per epoch; if False use the natural order.
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).

  Yields:
    name -> array of leading size ``global_batch_size // process_count``.

  Raises:
    ValueError: the global batch does not split evenly over the processes.
  """
  p, n_proc = _process(process_index, process_count)
  if global_batch_size % n_proc:
    raise ValueError(f"global_batch_size {global_batch_size} not divisible by {n_proc} processes")
  n = len(next(iter(arrays.values())))
  order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
  local = global_batch_size // n_proc
  for step in range(start_step, steps_per_epoch(n, global_batch_size)):
    # Sort the GLOBAL batch, then cut this process's piece: sorted gathers are faster, and device d
    # of the job sees the same examples whatever the process count (sorting each process's piece
    # would move examples between devices, so 2 x 2 devices would not reproduce 1 x 4).
    glob = np.sort(order[step * global_batch_size : (step + 1) * global_batch_size])
    idx = glob[p * local : (p + 1) * local]
    yield {k: v[idx] for k, v in arrays.items()}


def process_slice(
  num_examples: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
  """Contiguous slice of ``range(num_examples)`` owned by this process (for eval/test sets).

  The first ``num_examples % process_count`` processes get one extra example.
  """
  p, n_proc = _process(process_index, process_count)
  base, extra = divmod(num_examples, n_proc)
  start = p * base + min(p, extra)
  return slice(start, start + base + (1 if p < extra else 0))


def pad_batch(
  batch: Mapping[str, np.ndarray], size: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Pad each array of a (last, short) batch with zeros to ``size`` rows, with a validity mask.

  Args:
    batch: name -> array with a common leading length ``n <= size``.
    size: target leading length.

  Returns:
    ``(padded, mask)`` where ``mask`` is a float32 vector with 1 for real rows, 0 for padding.
  """
  n = len(next(iter(batch.values())))
  pad = size - n
  if pad < 0:
    raise ValueError(f"batch of {n} rows is larger than size {size}")
  out = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  return out, mask


def iterate_eval(
  arrays: Mapping[str, np.ndarray], batch_size: int, *, num_batches: int | None = None
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
  """Yield fixed-size ``(batch, mask)`` pairs covering every row of ``arrays`` once (last one padded).

  Fixed shapes mean one compilation; weight per-example results by ``mask`` and divide by its sum.

  Args:
    arrays: name -> array with a common leading length.
    batch_size: rows per batch.
    num_batches: yield exactly this many batches, adding all-padding ones at the end (every process
      of a multi-process eval must run the same number of collective steps); see
      :func:`eval_num_batches`.
  """
  n = len(next(iter(arrays.values())))
  count = -(-n // batch_size) if num_batches is None else num_batches
  if count * batch_size < n:
    raise ValueError(f"num_batches={num_batches} x {batch_size} does not cover the {n} rows")
  for i in range(count):
    start = i * batch_size
    yield pad_batch({k: v[start : start + batch_size] for k, v in arrays.items()}, batch_size)


def eval_num_batches(num_examples: int, batch_size: int, process_count: int | None = None) -> int:
  """Batches every process runs in a sharded eval: enough for the largest :func:`process_slice`."""
  n_proc = jax.process_count() if process_count is None else process_count
  largest = (num_examples + n_proc - 1) // n_proc
  return (largest + batch_size - 1) // batch_size


def sha256_of(path: str | os.PathLike) -> str:
  """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()
