"""Graceful preemption: SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints, exits 0.

Usage in a training loop::

    with PreemptionHandler() as preempt:
        for step in ...:
            state = train_step(...)
            if preempt.should_stop():
                ckpt.save(step, ...)
                preempt.exit(step, ckpt.path(step), resume_command("train.autoencoder.main"))

A second SIGINT while the flag is already set raises ``KeyboardInterrupt`` (a hard stop for an
impatient user). SIGKILL cannot be caught: the next start resumes from the last checkpoint on its
own. In a multi-process job :meth:`PreemptionHandler.should_stop` agrees over processes (any
process signalled -> all stop at the same step).
"""

from __future__ import annotations

import shlex
import signal
import sys
import types

import jax
import numpy as np


class PreemptionHandler:
  """Context manager that turns SIGTERM/SIGINT into a stop request checked between steps.

  Args:
    signals: the signals to catch.
    sync_every: in multi-process runs, agree over processes only every this many calls (the
      agreement is a collective; single-process runs never pay it).
  """

  def __init__(
    self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), sync_every: int = 1
  ):
    self.signals = signals
    self.sync_every = max(1, int(sync_every))
    self.requested = False
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    self._calls = 0

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    print(
      f"\n{self.signal_name} received: finishing the current step, then checkpointing "
      "(press Ctrl-C again to abort without a checkpoint).",
      file=sys.stderr,
      flush=True,
    )

  def __enter__(self) -> PreemptionHandler:
    for s in self.signals:
      try:
        self._previous[s] = signal.signal(s, self._handle)
      except ValueError:  # not the main thread: signals cannot be caught here
        pass
    return self

  def __exit__(self, *exc: object) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous.clear()

  def should_stop(self) -> bool:
    """True once a stop was requested (on any process, in multi-process runs)."""
    if jax.process_count() == 1:
      return self.requested
    self._calls += 1
    if self._calls % self.sync_every:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.any(flags))

  def exit(self, step: int, checkpoint_path: str, resume_cmd: str) -> None:
    """Print where the checkpoint is and how to resume, then exit with status 0."""
    if jax.process_index() == 0:
      print(
        f"Stopped by {self.signal_name or 'request'} after step {step}; checkpoint: {checkpoint_path}\n"
        f"resume with: {resume_cmd}",
        flush=True,
      )
    sys.exit(0)


def resume_command(module: str) -> str:
  """The command line that re-runs this program with the same arguments (it resumes from its workdir).

  Args:
    module: the program's module, e.g. ``"train.autoencoder.main"``.

  Returns:
    A shell-quoted command string.
  """
  args = " ".join(shlex.quote(a) for a in sys.argv[1:])
  return f"{shlex.quote(sys.executable)} -m {module} {args}".strip()
