"""The shared training loop (train/common/loop.py) on a toy least-squares program.

Properties: a run stopped at max_steps and resumed equals an uninterrupted one bit for bit, and its
metrics.jsonl and its TensorBoard events (as TensorBoard reads them) hold every step and epoch once; a non-finite step stops the run naming that step and
the last good checkpoint (none is written after it), or is skipped and counted with the parameters
left as they were; a checkpoint from one non-finite mode resumes in the other; a SIGTERM during
set-up, before the first step, still checkpoints and exits 0; a program that ends training early
stays ended when started again.
"""

from __future__ import annotations

import glob
import os
import signal
import struct
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2

from train.common import checkpoint, guard, loop, metrics, parallel, run_control
from train.common import step as step_lib

STEPS, EPOCHS = 6, 3
N = jax.local_device_count() * 2  # rows per batch: two per device
MESH = parallel.make_mesh()


def _config(**kw) -> ml_collections.ConfigDict:
  c = run_control.add_run_control(ml_collections.ConfigDict())
  c.log_every, c.progress = 4, False
  c.update(kw)
  return c


def _program(config, poison_step: int | None = None, on_setup=None, stop_after: int | None = None):
  """Least squares y = x w* on fixed data; the batch of global step ``poison_step`` holds a NaN."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(EPOCHS * STEPS, N, 4)).astype(np.float32)
  y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
  tx = step_lib.optimizer(optax.sgd(0.05, momentum=0.9), bool(config.skip_nonfinite))

  def loss_fn(params, state, batch, key):
    noise = 0.01 * jax.random.normal(key, batch["y"].shape)  # the step's key feeds the loss
    return jnp.mean((batch["x"] @ params["w"] - batch["y"] + noise) ** 2), ({}, {})

  params = {"w": jnp.zeros(4)}
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  state = parallel.put_replicated(state, MESH)
  jstep = step_lib.jit_train_step(
    step_lib.make_train_step(loss_fn, tx, skip_nonfinite=bool(config.skip_nonfinite)),
    parallel.shardings(state),
  )
  key = parallel.replicate_key(jax.random.key(1), MESH)

  def batches(epoch, start):
    for i in range(start, STEPS):
      g = epoch * STEPS + i
      xb = x[g].copy()
      if g + 1 in np.atleast_1d(poison_step if poison_step is not None else []):
        xb[0, 0] = np.nan
      yield parallel.put_batch({"x": xb, "y": y[g]}, MESH)

  def evaluate(rstate, info):
    if on_setup is not None and info.epoch == 0:
      on_setup()  # the untrained model's evaluation runs before the first step
    w = parallel.to_host(rstate["params"])["w"]
    return {"eval/loss": float(np.mean((x[0] @ w - y[0]) ** 2)), "epoch/seconds": info.seconds}

  program = loop.Program(
    module="tests.test_loop",
    label="toy",
    num_epochs=EPOCHS,
    steps_in_epoch=lambda e: STEPS,
    batches=batches,
    train_step=lambda r, b: jstep(r, b, key),
    evaluate=evaluate,
    evaluate_untrained=True,
    end_epoch=None if stop_after is None else lambda r, row, h: (r, row["epoch"] == stop_after),
  )
  return program, state


def _run(workdir, poison_step=None, on_setup=None, stop_after=None, **kw):
  config = _config(**kw)
  program, state = _program(config, poison_step, on_setup, stop_after)
  return loop.run(program, config, str(workdir), state)


def _w(result) -> np.ndarray:
  return parallel.to_host(result.state["params"])["w"]


def _tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """Scalars as TensorBoard shows them: files in name order, and a SessionLog.START at step s
  hides every event read before it whose step is >= s (TensorBoard's purge of a restarted run)."""
  series: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    data, i = open(path, "rb").read(), 0
    while i < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      (n,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4
      if event.session_log.status == event_pb2.SessionLog.START:
        series = {k: [(s, v) for s, v in pts if s < event.step] for k, pts in series.items()}
      for value in event.summary.value:
        series.setdefault(value.tag, []).append((event.step, value.simple_value))
  return series


def test_resume_is_bit_equal_and_logs_every_step_and_epoch_once(tmp_path) -> None:
  whole = _run(tmp_path / "whole")
  part = _run(tmp_path / "part", max_steps=9)
  assert part.steps == 9 and not part.finished
  # A crash after rows that no checkpoint recorded: the replay must not log them twice.
  with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
    f.write('{"step": 10, "epoch": 1, "train/loss": 1.0}\n')
  tb_dir, suffix = str(tmp_path / "part" / "tensorboard"), f".{time.time_ns()}"
  with SummaryWriter(tb_dir, filename_suffix=suffix) as tb:
    tb.add_scalar("train/loss", 1.0, 10)
  resumed = _run(tmp_path / "part")
  assert resumed.finished and resumed.steps == whole.steps == EPOCHS * STEPS
  np.testing.assert_array_equal(_w(resumed), _w(whole))
  strip = lambda h: [{k: v for k, v in r.items() if k != "epoch/seconds"} for r in h]  # noqa: E731
  assert strip(resumed.history) == strip(whole.history)
  rows = metrics.read_jsonl(tmp_path / "part" / "metrics.jsonl")
  assert [r["epoch"] for r in rows if "eval/loss" in r] == list(range(EPOCHS + 1))
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  assert train_steps == sorted(set(train_steps))  # each step once, in order
  assert all("step" in r and "epoch" in r for r in rows)
  ref = metrics.read_jsonl(tmp_path / "whole" / "metrics.jsonl")
  assert [r["step"] for r in ref if "train/loss" in r] == train_steps
  tb = _tensorboard_scalars(tmp_path / "part" / "tensorboard")
  tb_ref = _tensorboard_scalars(tmp_path / "whole" / "tensorboard")
  assert [s for s, _ in tb["train/loss"]] == train_steps
  assert [s for s, _ in tb["eval/loss"]] == [r["step"] for r in rows if "eval/loss" in r]
  timed = ("epoch/seconds",)  # wall time: the only scalar that differs between the two runs
  assert {k: v for k, v in tb.items() if k not in timed} == {
    k: v for k, v in tb_ref.items() if k not in timed
  }


def test_nonfinite_step_stops_naming_it_and_the_last_checkpoint(tmp_path) -> None:
  with pytest.raises(guard.NonFiniteError, match=r"step 9: non-finite.*checkpoints/6"):
    _run(tmp_path, poison_step=9)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps() == [6]


def test_nonfinite_step_is_skipped_and_counted(tmp_path) -> None:
  out = _run(tmp_path / "skip", poison_step=9, skip_nonfinite=True)
  assert out.skipped_steps == 1 and out.finished
  assert [r["epoch/skipped_steps"] for r in out.history] == [0, 0, 1, 1]
  assert np.isfinite(_w(out)).all()
  # The skipped step changed nothing: a run that stops at step 8 and one that skips step 9
  # and stops there hold the same parameters.
  a = _run(tmp_path / "a", max_steps=8, skip_nonfinite=True)
  b = _run(tmp_path / "b", poison_step=9, max_steps=9, skip_nonfinite=True)
  np.testing.assert_array_equal(_w(a), _w(b))


def test_an_epoch_of_skipped_steps_is_logged_as_such_and_the_run_finishes(tmp_path) -> None:
  epoch2 = list(range(STEPS + 1, 2 * STEPS + 1))  # every step of the second epoch
  out = _run(tmp_path, poison_step=epoch2, skip_nonfinite=True)
  assert out.finished and out.skipped_steps == STEPS
  row = out.history[2]
  assert row["epoch/skipped_steps"] == STEPS and "epoch/train_loss" not in row
  assert "epoch/train_loss" in out.history[3]
  assert _run(tmp_path, skip_nonfinite=True).finished  # a rerun has nothing left to do


def test_restore_best_picks_the_best_checkpoint(tmp_path) -> None:
  out = _run(tmp_path, checkpoint_every_epochs=1)
  config = _config()
  _, template = _program(config)
  best_epoch = min(out.history[1:], key=lambda r: r["eval/loss"])["epoch"]
  state, meta = loop.restore(str(tmp_path), template, best=True, best_metric="eval/loss")
  assert meta["epoch"] == best_epoch
  latest, meta = loop.restore(str(tmp_path), template)
  assert meta["epoch"] == EPOCHS
  np.testing.assert_array_equal(parallel.to_host(latest["params"])["w"], _w(out))


def test_checkpoint_resumes_across_the_nonfinite_mode(tmp_path) -> None:
  _run(tmp_path, max_steps=6)  # stop mode: plain optimizer state
  out = _run(tmp_path, skip_nonfinite=True, poison_step=9)  # skip mode resumes it
  assert out.finished and out.skipped_steps == 1
  _run(tmp_path / "back", max_steps=6, skip_nonfinite=True)
  assert _run(tmp_path / "back").finished


def test_sigterm_before_the_first_step_checkpoints_and_exits_0(tmp_path, capsys) -> None:
  with pytest.raises(SystemExit) as e:
    _run(tmp_path, on_setup=lambda: os.kill(os.getpid(), signal.SIGTERM))
  assert e.value.code == 0
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps() == [0]
  assert "resume with:" in capsys.readouterr().out
  assert _run(tmp_path).finished


def test_a_program_that_stops_early_stays_stopped(tmp_path) -> None:
  out = _run(tmp_path, stop_after=2)
  assert not out.finished and out.steps == 2 * STEPS and len(out.history) == 3
  again = _run(tmp_path, stop_after=2)  # started again: nothing more to do
  assert not again.finished and again.steps == 2 * STEPS and again.history == out.history


def test_run_control_fields_are_checked() -> None:
  with pytest.raises(ValueError, match="config.log_every"):
    run_control.validate_run_control(_config(log_every=0))
  with pytest.raises(ValueError, match="config.max_steps"):
    run_control.validate_run_control(_config(max_steps=0))
