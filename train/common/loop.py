"""The training loop every program runs: resume, epochs of steps, evaluation, metrics, checkpoints.

A program describes itself with a :class:`Program` (its batches, its pmapped step, its evaluation
and a few hooks) and calls :func:`run` with its initial state (one pytree). The loop owns what the
programs share:

- resume: the latest checkpoint in ``<workdir>/checkpoints`` holds the state and one metadata
  layout (:data:`META_KEYS`): the data position (epoch, step in epoch), the evaluation history, the
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

from train.common import checkpoint, guard, metrics, parallel, plots, preemption, progress
from train.common import step as step_lib
from train.common.run_control import validate_run_control

PyTree = Any
META_KEYS = (
  "epoch",
  "step_in_epoch",
  "history",
  "epoch_sums",
  "window_sums",
  "epoch_seconds",
  "skipped_steps",
  "metrics_rows",
  "stopped",
)
"""What every checkpoint's metadata holds (the checkpoint's step is its name)."""


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
    train_step: ``(state, batch) -> (state, metrics)`` on device (pmapped; metrics have a leading
      device axis and an ``ok`` flag; an optional ``weight`` weights the epoch means).
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
    to_host: device state -> host pytree that is checkpointed (default: device 0's copy).
    to_device: host pytree -> device state (default: replicated over the local devices).
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
  to_host: Callable[[Any], PyTree] = parallel.unreplicate
  to_device: Callable[[PyTree], Any] = parallel.replicate


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


class _Sums:
  """Running sums of the noisy training metrics: one window (for train rows) and one epoch."""

  def __init__(self, epoch: dict[str, float] | None = None, window: dict[str, float] | None = None):
    self.epoch: dict[str, float] = dict(epoch or {})
    self.window: dict[str, float] = dict(window or {})

  def add(self, m: dict[str, float]) -> None:
    w = float(m.pop("weight", 1.0))
    for sums in (self.epoch, self.window):
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + float(v) * w
      sums["weight"] = sums.get("weight", 0.0) + w

  @staticmethod
  def means(sums: dict[str, float], prefix: str) -> dict[str, float]:
    w = sums.get("weight", 0.0)
    return {f"{prefix}{k}": v / w for k, v in sums.items() if k != "weight" and w > 0}


def run(program: Program, config: ml_collections.ConfigDict, workdir: str, state: PyTree) -> Result:
  """Train ``program`` from ``state`` (or from the latest checkpoint in ``workdir``) to the end.

  Per epoch: the steps, an evaluation row (``history``, ``metrics.jsonl``), a checkpoint every
  ``checkpoint_every_epochs`` and at the last epoch (ranked by ``best_metric``).

  Args:
    program: the program's pieces.
    config: its config (the run-control fields of :func:`add_run_control`).
    workdir: output folder: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``sparsity.png``.
    state: the initial host state (a pytree with ``opt_state``); also the restore target.

  Returns:
    The :class:`Result`.

  Raises:
    NonFiniteError: a non-finite step with ``skip_nonfinite`` off.
    CheckpointError: the latest checkpoint cannot be read.
  """
  validate_run_control(config)
  skip, log_every = bool(config.skip_nonfinite), int(config.log_every)
  with preemption.PreemptionHandler() as preempt:
    ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      best_metric=program.best_metric,
      best_mode=program.best_mode,
    )
    writer = metrics.MetricsWriter(workdir)
    epoch, in_epoch, history, skipped, sums, seconds = 0, 0, [], 0, _Sums(), 0.0
    stopped = False  # the program's end_epoch ended training early (kept: a rerun does not go on)
    template = state["opt_state"]
    restored = ckpt.restore({**state, "opt_state": step_lib.inner_opt_state(template)})
    if restored is not None:
      state, meta = restored
      epoch, in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
      history, skipped = list(meta["history"]), int(meta["skipped_steps"])
      sums = _Sums(meta["epoch_sums"], meta["window_sums"])
      seconds, stopped = float(meta["epoch_seconds"]), bool(meta["stopped"])
      state = {**state, "opt_state": step_lib.wrap_opt_state(template, state["opt_state"], skipped)}
    step = (ckpt.latest_step() or 0) if restored is not None else 0
    writer.resume(*((int(meta["metrics_rows"]), step) if restored is not None else (0, None)))
    rstate = program.to_device(state)

    def save(best: dict | None = None) -> None:
      meta = dict(
        zip(
          META_KEYS,
          (
            epoch,
            in_epoch,
            history,
            sums.epoch,
            sums.window,
            seconds,
            skipped,
            writer.rows,
            stopped,
          ),
          strict=True,
        )
      )
      host = program.to_host(rstate)
      host = {**host, "opt_state": step_lib.inner_opt_state(host["opt_state"])}
      ckpt.save(step, host, meta=meta, metrics=best)

    def stop_if_requested() -> None:
      """After a drain (every process at the same step): checkpoint and exit if a signal came."""
      if preempt.should_stop():
        save()
        bar.close()
        writer.close()
        preempt.exit(step, ckpt.path(step), preemption.resume_command(program.module))

    pending: list[tuple[int, dict]] = []

    def drain(write: bool = True) -> None:
      """Fetch the pending steps' metrics (one host sync), apply the non-finite policy, log.

      Train rows are written at steps that are multiples of ``log_every`` and at epoch ends, so
      a run stopped in between and resumed logs the same rows as one never stopped.
      """
      nonlocal skipped
      fetched = jax.device_get([m for _, m in pending])
      for (s, _), m in zip(pending, fetched, strict=True):
        m = {k: np.asarray(v).reshape(-1)[0] for k, v in m.items()}
        if bool(m.pop("ok")):
          sums.add(m)
          continue
        if not skip:
          last = ckpt.latest_step()
          where = ckpt.path(last) if last is not None else "none (no checkpoint written yet)"
          raise guard.NonFiniteError(
            f"step {s}: non-finite loss or gradient (loss={float(m['loss'])}); stopping without "
            f"saving. Last good checkpoint: {where}. Lower the learning rate, or set "
            "skip_nonfinite=True in the config to skip such steps (they are counted in the metrics)."
          )
        skipped += 1
      pending.clear()
      if write and sums.window:
        row = _Sums.means(sums.window, "train/")
        writer.write(step, {"epoch": epoch, **row})
        bar.set_postfix({k[6:]: f"{v:.4g}" for k, v in row.items()}, refresh=False)
        sums.window = {}

    def end_of_epoch(info: EpochInfo) -> bool:
      """Evaluate, log, maybe checkpoint; True if the program asks to stop."""
      nonlocal rstate
      row = {"epoch": info.epoch, "step": info.step, **program.evaluate(rstate, info)}
      row.update(_Sums.means(sums.epoch, "epoch/train_"))
      row["epoch/skipped_steps"] = skipped
      history.append(row)
      writer.write(info.step, row)
      stop = False
      if program.end_epoch is not None and info.epoch > 0:
        rstate, stop = program.end_epoch(rstate, row, history)
      return stop

    num_epochs = int(program.num_epochs)
    total = sum(program.steps_in_epoch(e) for e in range(num_epochs))
    max_steps = int(config.max_steps) if int(config.max_steps) > 0 else total
    bar = progress.progress_bar(
      total=min(total, max_steps),
      initial=min(step, max_steps),
      desc=program.label,
      disable=None if config.progress else True,
    )
    if not history and program.evaluate_untrained:
      end_of_epoch(EpochInfo(0, step, 0, 0.0))
      if program.checkpoint_untrained:
        save({program.best_metric: history[-1][program.best_metric]})
    stop_if_requested()  # a signal during set-up: checkpoint the start and exit
    # A signal is acted on at the next drain; one process alone drains at once (no agreement needed).
    prompt = jax.process_count() == 1
    finished = not stopped
    while epoch < num_epochs and not stopped:
      if step >= max_steps:  # max_steps at an epoch's end
        save()
        finished = False
        break
      if in_epoch == 0 and program.start_epoch is not None:
        rstate = program.start_epoch(rstate, epoch)
      t0 = time.perf_counter()
      n_steps = program.steps_in_epoch(epoch)
      for batch in program.batches(epoch, in_epoch):
        rstate, m = program.train_step(rstate, batch)
        step, in_epoch = step + 1, in_epoch + 1
        pending.append((step, m))
        bar.update(1)
        at_end = in_epoch == n_steps or step >= max_steps
        if step % log_every == 0 or in_epoch == n_steps:
          drain()
        elif step >= max_steps or (prompt and preempt.requested):
          drain(write=False)  # the window goes on after the resume
        if at_end:
          break
        if not pending:
          seconds, t0 = seconds + time.perf_counter() - t0, time.perf_counter()
          stop_if_requested()
      seconds += time.perf_counter() - t0
      if in_epoch < n_steps:  # max_steps inside an epoch: resumable from here
        save()
        finished = False
        break
      epoch, in_epoch = epoch + 1, 0
      stopped = end_of_epoch(EpochInfo(epoch, step, n_steps, seconds))
      sums, seconds = _Sums(), 0.0
      if stopped or epoch % int(config.checkpoint_every_epochs) == 0 or epoch == num_epochs:
        save({program.best_metric: history[-1][program.best_metric]})
      if stopped:
        finished = False
        break
      stop_if_requested()
    bar.close()
    writer.close()
    ckpt.close()
  if jax.process_index() == 0:
    plots.sparsity_plot(history, os.path.join(workdir, "sparsity.png"))
  return Result(history, step, skipped, rstate, finished)
