"""The training loop every program runs: resume, epochs of steps, evaluation, metrics, checkpoints.

A program describes itself with a :class:`Program` (its batches, its jitted step, its evaluation
and a few hooks) and calls :func:`run` with its initial state (one pytree of global arrays, placed on
the program's mesh). The loop owns what the programs share:

- resume: the latest checkpoint in ``<workdir>/checkpoints`` holds the state and one metadata
  layout (the fields of :class:`RunState`): the data position (epoch, step in epoch), the evaluation history, the
  partial epoch's sums of training metrics, the skipped-step count and the metrics log's row count,
  so a resumed run continues bit for bit and ``metrics.jsonl`` holds every step and epoch once;
- the progress bar, the metrics writer (names in :mod:`train.common.metrics`), and a plot of the
  per-layer sparsity records when the evaluation reports them;
- preemption: SIGTERM/SIGINT (from the moment :func:`run` starts, also before the first step) ends
  the current step, checkpoints and exits 0 with the command that resumes;
- the non-finite policy, read every ``log_every`` steps (no host sync per step): stop with an
  error naming the last good checkpoint (none is written after a non-finite step), or count the
  skipped step (see :mod:`train.common.step`);
- ``max_steps`` (stop there with a resumable checkpoint) and the checkpoint cadence.

The run-control config fields are the same in every program: ``run_control.add_run_control``
sets them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import numpy as np

from train.common import checkpoint, guard, metrics, plots, preemption, progress
from train.common import step as step_lib
from train.common.run_control import validate_run_control

PyTree = Any


@dataclasses.dataclass(frozen=True)
class EpochInfo:
  """What the loop knows of the epoch an evaluation closes.

  Attributes:
    epoch: epochs finished (0 for the untrained model).
    step: optimizer steps done.
    steps: steps of this epoch (0 for the untrained model).
    seconds: wall-clock seconds of the epoch's steps (across a resume; evaluation not included).
  """

  epoch: int
  step: int
  steps: int
  seconds: float


@dataclasses.dataclass(frozen=True)
class Program:
  """What a program gives the loop.

  Attributes:
    module: the program's main module (for the resume command), e.g. ``"train.wrn.main"``.
    label: progress bar label.
    num_epochs: epochs to train.
    steps_in_epoch: ``epoch -> number of steps`` of that (0-based) epoch.
    batches: ``(epoch, start) -> iterable`` of the device-ready batches of that epoch from step
      ``start`` on.
    train_step: ``(state, batch) -> (state, metrics)`` on device (jitted; scalar metrics with an
      ``ok`` flag; an optional ``weight`` weights the epoch means).
    evaluate: ``(state, EpochInfo) -> {name: float}``, the ``eval/*`` and ``epoch/*`` entries of
      the evaluation row.
    best_metric: the row entry that ranks checkpoints (kept: the latest and the best).
    best_mode: ``"min"`` or ``"max"``.
    evaluate_untrained: also evaluate before the first step (a row with ``epoch`` 0).
    checkpoint_untrained: with ``evaluate_untrained``, also checkpoint there, ranked like the others
      (so the starting point can be the best checkpoint, as in AWD-LSTM's finetune).
    start_epoch: optional ``(state, epoch) -> state`` at the start of an epoch (not on a
      mid-epoch resume), e.g. the LM's carry reset.
    end_epoch: optional ``(state, row, history) -> (state, stop)`` after an evaluation, e.g. the
      LM's switch to averaged SGD; ``stop`` ends training after this epoch.
  """

  module: str
  label: str
  num_epochs: int
  steps_in_epoch: Callable[[int], int]
  batches: Callable[[int, int], Iterable[Any]]
  train_step: Callable[[Any, Any], tuple[Any, dict]]
  evaluate: Callable[[Any, EpochInfo], dict[str, float]]
  best_metric: str = "eval/loss"
  best_mode: str = "min"
  evaluate_untrained: bool = False
  checkpoint_untrained: bool = False
  start_epoch: Callable[[Any, int], Any] | None = None
  end_epoch: Callable[[Any, dict, list], tuple[Any, bool]] | None = None


@dataclasses.dataclass
class Result:
  """What :func:`run` returns.

  Attributes:
    history: the evaluation rows, oldest first.
    steps: optimizer steps done.
    skipped_steps: non-finite steps skipped.
    state: the final device state.
    finished: every epoch ran (False when ``max_steps`` or ``end_epoch`` stopped it; a run that
      ``end_epoch`` stopped stays stopped when started again).
  """

  history: list[dict[str, Any]]
  steps: int
  skipped_steps: int
  state: Any
  finished: bool


def _means(sums: dict[str, float], prefix: str) -> dict[str, float]:
  """Weighted means of running sums (``weight`` holds the total weight)."""
  w = sums.get("weight", 0.0)
  return {f"{prefix}{k}": v / w for k, v in sums.items() if k != "weight" and w > 0}


def _add(sums: dict[str, float], m: dict[str, float], w: float) -> None:
  for k, v in m.items():
    sums[k] = sums.get(k, 0.0) + float(v) * w
  sums["weight"] = sums.get("weight", 0.0) + w


def restore(
  workdir: str, state: PyTree, *, best: bool = False, best_metric: str | None = None
) -> tuple[PyTree, dict] | None:
  """The latest (or best) checkpoint of ``workdir/checkpoints`` in the layout of ``state``.

  Checkpoints hold the optimizer state without ``optax.apply_if_finite``'s counters
  (:func:`train.common.step.inner_opt_state`), so a checkpoint written with ``skip_nonfinite`` off
  resumes with it on, and the reverse; the skipped-step count comes from the metadata.

  Args:
    workdir: the run's folder.
    state: the initial state (the restore target: structure, shapes, shardings).
    best: the best checkpoint by ``best_metric`` instead of the latest.
    best_metric: the metric that ranked the checkpoints (needed with ``best``).

  Returns:
    ``(state, meta)``, or None when there is no checkpoint.
  """
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), best_metric=best_metric)
  try:
    return _restore(ckpt, state, best=best)
  finally:
    ckpt.close()


def _restore(ckpt: checkpoint.Checkpointer, state: PyTree, *, best: bool = False):
  template = state["opt_state"]
  restored = ckpt.restore({**state, "opt_state": step_lib.inner_opt_state(template)}, best=best)
  if restored is None:
    return None
  got, meta = restored
  skipped = int(meta.get("skipped_steps", 0))
  return {**got, "opt_state": step_lib.wrap_opt_state(template, got["opt_state"], skipped)}, meta


@dataclasses.dataclass
class RunState:
  """Where a run is: what every checkpoint's metadata holds, so a resume continues bit for bit.

  Attributes:
    step: optimizer steps done (the checkpoint's name).
    epoch: epochs finished.
    step_in_epoch: steps done in the current epoch.
    history: the evaluation rows so far.
    epoch_sums: weighted sums of this epoch's training metrics.
    window_sums: the same since the last train row.
    epoch_seconds: wall-clock seconds of this epoch's steps.
    skipped_steps: non-finite steps skipped.
    metrics_rows: rows in metrics.jsonl (a resume drops rows written after the checkpoint).
    stopped: the program's ``end_epoch`` ended training (a rerun does not go on).
  """

  step: int = 0
  epoch: int = 0
  step_in_epoch: int = 0
  history: list = dataclasses.field(default_factory=list)
  epoch_sums: dict = dataclasses.field(default_factory=dict)
  window_sums: dict = dataclasses.field(default_factory=dict)
  epoch_seconds: float = 0.0
  skipped_steps: int = 0
  metrics_rows: int = 0
  stopped: bool = False

  def meta(self) -> dict:
    """The checkpoint metadata (the step is the checkpoint's name)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "step"}

  @classmethod
  def from_meta(cls, step: int, meta: dict) -> RunState:
    fields = {f.name for f in dataclasses.fields(cls)} - {"step"}
    return cls(step=step, **{k: meta[k] for k in fields})

  def add(self, m: dict[str, float]) -> None:
    """Add one step's metrics to the epoch's and the window's sums."""
    w = float(m.pop("weight", 1.0))
    _add(self.epoch_sums, m, w)
    _add(self.window_sums, m, w)


class _Run:
  """One run of :func:`run`: the program, the device state, the run state and the writers."""

  def __init__(self, program: Program, config: ml_collections.ConfigDict, workdir: str, state):
    self.program = program
    self.skip, self.log_every = bool(config.skip_nonfinite), int(config.log_every)
    self.ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      best_metric=program.best_metric,
      best_mode=program.best_mode,
    )
    self.writer = metrics.MetricsWriter(workdir)
    self.bar, self._closed = None, False
    try:
      restored = _restore(self.ckpt, state)
    except BaseException:
      self.close(quietly=True)  # an unreadable checkpoint: no orbax thread left behind at exit
      raise
    if restored is None:
      self.state, self.rs = state, RunState()
      self.writer.resume(0, None)
    else:
      self.state, meta = restored
      self.rs = RunState.from_meta(self.ckpt.latest_step() or 0, meta)
      self.writer.resume(self.rs.metrics_rows, self.rs.step)
    self.pending: list[tuple[int, dict]] = []

  def save(self, best: dict | None = None) -> None:
    """Checkpoint the device state and the run state (ranked by ``best`` if given)."""
    self.rs.metrics_rows = self.writer.rows
    state = {**self.state, "opt_state": step_lib.inner_opt_state(self.state["opt_state"])}
    self.ckpt.save(self.rs.step, state, meta=self.rs.meta(), metrics=best)

  def save_ranked(self) -> None:
    """Checkpoint, ranked by the newest evaluation row's ``best_metric``."""
    self.save({self.program.best_metric: self.rs.history[-1][self.program.best_metric]})

  def drain(self, write: bool = True) -> None:
    """Fetch the pending steps' metrics (one host sync), apply the non-finite policy, log.

    Train rows are written at steps that are multiples of ``log_every`` and at epoch ends, so a
    run stopped in between and resumed logs the same rows as one never stopped.
    """
    rs = self.rs
    fetched = jax.device_get([m for _, m in self.pending])
    for (s, _), m in zip(self.pending, fetched, strict=True):
      m = {k: np.asarray(v).reshape(-1)[0] for k, v in m.items()}
      if bool(m.pop("ok")):
        rs.add(m)
        continue
      if not self.skip:
        last = self.ckpt.latest_step()
        where = self.ckpt.path(last) if last is not None else "none (no checkpoint written yet)"
        raise guard.NonFiniteError(
          f"step {s}: non-finite loss or gradient (loss={float(m['loss'])}); stopping without "
          f"saving. Last good checkpoint: {where}. Lower the learning rate, or set "
          "skip_nonfinite=True in the config to skip such steps (they are counted in the metrics)."
        )
      rs.skipped_steps += 1
    self.pending.clear()
    if write and rs.window_sums:
      row = _means(rs.window_sums, "train/")
      self.writer.write(rs.step, {"epoch": rs.epoch, **row})
      self.bar.set_postfix({k[6:]: f"{v:.4g}" for k, v in row.items()}, refresh=False)
      rs.window_sums = {}

  def end_of_epoch(self, info: EpochInfo) -> bool:
    """Evaluate, log; True if the program asks to stop.

    An epoch whose steps were all skipped has no ``epoch/train_*`` means; its row says so with
    ``epoch/skipped_steps``.
    """
    rs = self.rs
    row = {"epoch": info.epoch, "step": info.step, **self.program.evaluate(self.state, info)}
    row.update(_means(rs.epoch_sums, "epoch/train_"))
    row["epoch/skipped_steps"] = rs.skipped_steps
    rs.history.append(row)
    self.writer.write(info.step, row)
    if self.program.end_epoch is not None and info.epoch > 0:
      self.state, stop = self.program.end_epoch(self.state, row, rs.history)
      return stop
    return False

  def __enter__(self) -> _Run:
    return self

  def __exit__(self, error_type, *_) -> None:
    # After an error (or the preemption exit) its message must stay the last thing printed.
    self.close(quietly=error_type is not None)

  def close(self, quietly: bool = False) -> None:
    """Finish the writes and release the writers, once. ``quietly``: on the way out of an error,
    whose message must stay the last thing printed, a failure to close is ignored."""
    if self._closed:
      return
    self._closed = True
    closers = [self.writer.close, self.ckpt.close]
    if self.bar is not None:
      closers.insert(0, self.bar.close)
    for close in closers:
      try:
        close()
      except Exception:
        if not quietly:
          raise


def run(program: Program, config: ml_collections.ConfigDict, workdir: str, state: PyTree) -> Result:
  """Train ``program`` from ``state`` (or from the latest checkpoint in ``workdir``) to the end.

  Per epoch: the steps, an evaluation row (``history``, ``metrics.jsonl``), a checkpoint every
  ``checkpoint_every_epochs`` and at the last epoch (ranked by ``best_metric``).

  Args:
    program: the program's pieces.
    config: its config (the run-control fields of :func:`add_run_control`).
    workdir: output folder: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``sparsity.png``.
    state: the initial device state (a pytree with ``opt_state``); also the restore target.

  Returns:
    The :class:`Result`.

  Raises:
    NonFiniteError: a non-finite step with ``skip_nonfinite`` off.
    CheckpointError: the latest checkpoint cannot be read.
  """
  validate_run_control(config)
  with preemption.PreemptionHandler() as preempt, _Run(program, config, workdir, state) as r:
    rs = r.rs

    def stop_if_requested() -> None:
      """After a drain (every process at the same step): checkpoint and exit if a signal came."""
      if preempt.should_stop():
        r.save()
        r.close()
        preempt.exit(rs.step, r.ckpt.path(rs.step), preemption.resume_command(program.module))

    num_epochs = int(program.num_epochs)
    total = sum(program.steps_in_epoch(e) for e in range(num_epochs))
    max_steps = int(config.max_steps) if int(config.max_steps) > 0 else total
    r.bar = progress.progress_bar(
      total=min(total, max_steps),
      initial=min(rs.step, max_steps),
      desc=program.label,
      disable=None if config.progress else True,
    )
    if not rs.history and program.evaluate_untrained:
      r.end_of_epoch(EpochInfo(0, rs.step, 0, 0.0))
      if program.checkpoint_untrained:
        r.save_ranked()
    stop_if_requested()  # a signal during set-up: checkpoint the start and exit
    # A signal is acted on at the next drain; one process alone drains at once (no agreement needed).
    prompt = jax.process_count() == 1
    finished = not rs.stopped
    while rs.epoch < num_epochs and not rs.stopped:
      if rs.step >= max_steps:  # max_steps at an epoch's end
        r.save()
        finished = False
        break
      if rs.step_in_epoch == 0 and program.start_epoch is not None:
        r.state = program.start_epoch(r.state, rs.epoch)
      t0 = time.perf_counter()
      n_steps = program.steps_in_epoch(rs.epoch)
      for batch in program.batches(rs.epoch, rs.step_in_epoch):
        r.state, m = program.train_step(r.state, batch)
        rs.step, rs.step_in_epoch = rs.step + 1, rs.step_in_epoch + 1
        r.pending.append((rs.step, m))
        r.bar.update(1)
        at_end = rs.step_in_epoch == n_steps or rs.step >= max_steps
        if rs.step % r.log_every == 0 or rs.step_in_epoch == n_steps:
          r.drain()
        elif rs.step >= max_steps or (prompt and preempt.requested):
          r.drain(write=False)  # the window goes on after the resume
        if at_end:
          break
        if not r.pending:
          rs.epoch_seconds, t0 = rs.epoch_seconds + time.perf_counter() - t0, time.perf_counter()
          stop_if_requested()
      rs.epoch_seconds += time.perf_counter() - t0
      if rs.step_in_epoch < n_steps:  # max_steps inside an epoch: resumable from here
        r.save()
        finished = False
        break
      rs.epoch, rs.step_in_epoch = rs.epoch + 1, 0
      rs.stopped = r.end_of_epoch(EpochInfo(rs.epoch, rs.step, n_steps, rs.epoch_seconds))
      rs.epoch_sums, rs.window_sums, rs.epoch_seconds = {}, {}, 0.0
      if (
        rs.stopped or rs.epoch % int(config.checkpoint_every_epochs) == 0 or rs.epoch == num_epochs
      ):
        r.save_ranked()
      if rs.stopped:
        finished = False
        break
      stop_if_requested()
  if jax.process_index() == 0:
    plots.sparsity_plot(rs.history, os.path.join(workdir, "sparsity.png"))
  return Result(rs.history, rs.step, rs.skipped_steps, r.state, finished)
