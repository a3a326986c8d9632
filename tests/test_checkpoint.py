"""train.common.checkpoint, guard, metrics, preemption: round trips and clear failures (the loop's
non-finite policy is tested in test_loop.py)."""

import json
import os
import signal

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from train.common import checkpoint, guard, metrics, parallel, plots, preemption


def _state(seed):
  model = nnx.Linear(3, 4, rngs=nnx.Rngs(seed))
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  return model, opt


def test_checkpoint_roundtrip_state_and_meta(tmp_path):
  model, opt = _state(0)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", best_metric="loss")
  meta = {"epoch": 3, "step_in_epoch": 7}
  assert ckpt.save(10, nnx.state((model, opt)), meta=meta, metrics={"loss": 1.0})
  assert not ckpt.save(10, nnx.state((model, opt)), meta=meta)  # same step: no-op

  fresh_model, fresh_opt = _state(1)
  assert not np.allclose(fresh_model.kernel[...], model.kernel[...])
  state, got_meta = ckpt.restore(nnx.state((fresh_model, fresh_opt)))
  nnx.update((fresh_model, fresh_opt), state)
  np.testing.assert_array_equal(fresh_model.kernel[...], model.kernel[...])
  assert got_meta["epoch"] == 3 and got_meta["step_in_epoch"] == 7 and got_meta["step"] == 10


def test_global_arrays_are_written_from_their_shards_and_restored_with_the_target_sharding(
  tmp_path,
):
  mesh = parallel.make_mesh(4)
  carry = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  state = {
    "w": parallel.put_replicated(np.ones((2, 2), np.float32), mesh),
    "carry": parallel.put_sharded(carry, mesh),
  }
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, state)
  target = {
    "w": parallel.put_replicated(np.zeros((2, 2), np.float32), mesh),
    "carry": parallel.put_sharded(np.zeros_like(carry), mesh),
  }
  got, _ = ckpt.restore(target)
  assert got["carry"].sharding == target["carry"].sharding and got["w"].is_fully_replicated
  np.testing.assert_array_equal(parallel.to_host(got["carry"]), carry)


def test_a_checkpoint_of_the_per_device_programs_is_refused_in_one_line(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(3, {"w": np.zeros(2, np.float32)})
  meta_file = tmp_path / "3" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["format"]  # as the pmap-era programs wrote it
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(checkpoint.CheckpointError, match="earlier version") as e:
    checkpoint.Checkpointer(tmp_path).restore({"w": np.zeros(2, np.float32)})
  assert "\n" not in str(e.value)


def test_checkpoint_keeps_latest_and_best(tmp_path):
  model, _ = _state(0)
  ckpt = checkpoint.Checkpointer(tmp_path, best_metric="loss", keep_latest=1, keep_best=1)
  for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)]:
    ckpt.save(step, nnx.state(model), metrics={"loss": loss})
  assert ckpt.all_steps() == [2, 4]
  assert ckpt.latest_step() == 4 and ckpt.best_step() == 2
  assert checkpoint.Checkpointer(tmp_path / "empty").restore(nnx.state(model)) is None


def test_corrupted_checkpoint_names_the_folder(tmp_path):
  model, _ = _state(0)
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(5, nnx.state(model))
  # Truncate every data file of the state item.
  for root, _, files in os.walk(tmp_path / "5" / "state"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\0")
  with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "5")):
    checkpoint.Checkpointer(tmp_path).restore(nnx.state(model))


def test_wrong_shape_checkpoint_is_rejected(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, {"w": np.zeros((3, 4), np.float32)})
  with pytest.raises(checkpoint.CheckpointError):
    ckpt.restore({"w": np.zeros((5, 4), np.float32)})


def test_guard_finds_nonfinite_leaves_and_keeps_the_old_tree():
  good = {"g": jnp.ones(3)}
  bad = {"g": jnp.array([1.0, jnp.nan, 0.0])}
  assert bool(guard.all_finite(good)) and not bool(guard.all_finite(bad))
  kept = guard.select_tree(guard.all_finite(bad), bad, good)
  np.testing.assert_array_equal(kept["g"], good["g"])


def test_metrics_jsonl_and_tensorboard(tmp_path):
  w = metrics.MetricsWriter(tmp_path)
  w.write(1, {"loss": np.float32(0.5), "acc": jnp.array(1.0)})
  w.write(2, {"loss": float("nan")})
  w.close()
  rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  assert (
    [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] == 0.5 and np.isnan(rows[1]["loss"])
  )
  assert os.listdir(tmp_path / "tensorboard")
  off = metrics.MetricsWriter(tmp_path / "off", enabled=False)
  off.write(1, {"loss": 1.0})
  assert not os.path.exists(tmp_path / "off")


def test_plot_written(tmp_path):
  path = plots.line_plot({"a": ([0, 1], [1.0, 2.0])}, tmp_path / "p" / "x.png", xlabel="e")
  assert os.path.getsize(path) > 1000


def test_preemption_flag_and_clean_exit(capsys):
  with preemption.PreemptionHandler() as p:
    assert not p.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)
    assert p.should_stop() and p.signal_name == "SIGTERM"
    with pytest.raises(SystemExit) as e:
      p.exit(12, "/w/ckpt/12", preemption.resume_command("train.x.main"))
    assert e.value.code == 0
  out = capsys.readouterr().out
  assert "after step 12" in out and "resume with:" in out and "-m train.x.main" in out
  assert signal.getsignal(signal.SIGTERM) is not p._handle
