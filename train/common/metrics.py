"""Metrics writer: one JSON line per ``write`` in ``<workdir>/metrics.jsonl`` plus TensorBoard events.

Only process 0 writes (other processes get a writer whose methods do nothing), so multi-process
runs produce one log. Read the JSONL back with :func:`read_jsonl`.

Naming scheme, the same in every program (``train.autoencoder``, ``train.wrn``, ``train.lm``):

- Every row has ``step`` (optimizer steps done when the row was written; the x-axis of every
  metric), ``epoch`` (epochs finished when it was written, an int) and ``time`` (Unix seconds).
- ``train/<name>``: the noisy training metrics of the steps since the previous train row (mean over
  the finite steps), written every ``log_every`` steps: ``train/loss`` in every program, plus e.g.
  ``train/error`` (WRN, %), ``train/nll``, ``train/ar``, ``train/tar``, ``train/grad_norm`` (LM).
- ``eval/<name>``: measured at an evaluation, once per finished epoch (and at epoch 0 where a
  program evaluates the untrained model), on the held-out split (test for the autoencoder and the
  WRN, validation for the LM): ``eval/loss`` in every program, plus ``eval/error`` (WRN, %),
  ``eval/ppl`` (LM), ``eval/hoyer``, ``eval/zero_fraction``, ... (autoencoder).
- ``eval/sparsity/<layer path>/hoyer`` and ``eval/sparsity/<layer path>/zero_fraction``: the
  per-layer sparsity records of the input of every Sparseout site (``record_sparsity``), at every
  evaluation; ``<layer path>`` is the ``/``-joined path of the layer in the model.
- ``epoch/<name>``: the finished epoch's summary, in the same row as its ``eval/*``:
  ``epoch/train_<name>`` (mean of the noisy training metric over the epoch's finite steps),
  ``epoch/skipped_steps`` (non-finite steps skipped so far), ``epoch/lr`` (WRN), throughput
  (``epoch/images_per_s``, ``epoch/tokens_per_s``) and other per-program figures (``epoch/asgd``,
  ``epoch/enc_kernel_norm``, ...).
- ``test/<name>``: a final measurement after training (LM: ``test/ppl`` and ``test/loss`` of the
  best checkpoint, with ``test/valid_ppl`` and ``test/best_epoch`` of the same checkpoint).

So an evaluation row is one with an ``eval/loss`` key; a run resumed after a crash rewrites no row
twice, in the JSONL or in TensorBoard (the checkpoint records how many rows the log had; see
:meth:`MetricsWriter.resume`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def _scalar(v: Any) -> float | int | str:
  if isinstance(v, str):
    return v
  a = np.asarray(v)
  if a.size != 1:
    raise ValueError(f"metric values must be scalars, got shape {a.shape}")
  x = a.item()
  return x if isinstance(x, int) and not isinstance(x, bool) else float(x)


class MetricsWriter:
  """Append scalar metrics to ``metrics.jsonl`` and TensorBoard event files under ``workdir``.

  Args:
    workdir: output folder (created if missing).
    enabled: write anything at all; default: only on process 0.
    tensorboard: also write TensorBoard events (tensorboardX) under ``workdir/tensorboard``.
    filename: JSONL file name inside ``workdir``.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    enabled: bool | None = None,
    tensorboard: bool = True,
    filename: str = "metrics.jsonl",
  ):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(os.fspath(workdir), filename)
    self._tb_dir = os.path.join(os.fspath(workdir), "tensorboard") if tensorboard else None
    self._tb = None
    self._purge_step: int | None = None
    self.rows = 0
    if not self.enabled:
      return
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.rows = sum(1 for line in f if line.strip())
    os.makedirs(os.fspath(workdir), exist_ok=True)

  def _tensorboard(self) -> Any:
    """The TensorBoard writer, opened at the first write (after any :meth:`resume`)."""
    if self._tb is None and self._tb_dir is not None:
      from tensorboardX import SummaryWriter

      # tensorboardX names its file by the second; the nanoseconds keep two writers of one
      # second (a short run's writer and the one after it) from overwriting each other's file,
      # and keep the files in the order TensorBoard must read them.
      suffix = f".{time.time_ns()}"
      self._tb = SummaryWriter(self._tb_dir, purge_step=self._purge_step, filename_suffix=suffix)
    return self._tb

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Record ``scalars`` (name -> number or string) at ``step``.

    Args:
      step: x-axis value (global step or epoch).
      scalars: values; array-likes must hold one element.
    """
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    row.update({k: _scalar(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      # NaN/inf are written as JSON strings so every line stays valid JSON.
      f.write(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n")
    self.rows += 1
    tb = self._tensorboard()
    if tb is not None:
      for k, v in row.items():
        if k not in ("step", "time") and isinstance(v, (int, float)):
          tb.add_scalar(k, v, int(step))
      tb.flush()

  def resume(self, rows: int, step: int | None) -> None:
    """Continue the log where a checkpoint left it: the first ``rows`` rows, nothing after ``step``.

    A run killed after writing rows that no checkpoint recorded replays those steps on restart.
    Cutting ``metrics.jsonl`` back to the checkpoint's row count, and starting the TensorBoard
    events with a purge at ``step + 1`` (TensorBoard then hides every earlier event at or after
    that step), keeps every step and epoch in both logs once. Call it before the first write.

    Args:
      rows: rows the checkpoint's log had (0 for a fresh start).
      step: the checkpoint's step (every row at or before it is kept), or None for a fresh start
        (every earlier TensorBoard event in ``workdir`` is hidden).
    """
    if not self.enabled:
      return
    if self._tb is not None:
      raise RuntimeError("MetricsWriter.resume must come before the first write")
    self._purge_step = 0 if step is None else int(step) + 1
    if self.rows <= rows:
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip()][:rows]
    with open(self.path, "w") as f:
      f.writelines(kept)
    self.rows = len(kept)

  def close(self) -> None:
    """Flush and close the TensorBoard writer."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _json_safe(v: Any) -> Any:
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Read every row of a metrics JSONL file (``"nan"``/``"inf"`` strings become floats).

  Raises:
    FileNotFoundError: with the path, if the file does not exist.
  """
  rows = []
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        rows.append({k: float(v) if v in ("nan", "inf", "-inf") else v for k, v in row.items()})
  return rows
