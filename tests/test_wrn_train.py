"""Tests of train/wrn: the pmapped step keeps devices in sync, the loss falls, resume == uninterrupted."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from train.common import metrics, parallel
from train.wrn import input_pipeline, train
from train.wrn.configs import tiny


def _config(**overrides):
  c = tiny.get_config()
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def datasets():
  return train.load_datasets(_config())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, datasets):
  workdir = str(tmp_path_factory.mktemp("wrn_full"))
  return train.train_and_evaluate(_config(), workdir, datasets=datasets)


def test_train_step_keeps_every_device_identical(datasets) -> None:
  config = _config()
  n = jax.local_device_count()
  assert n >= 4, "tests/conftest.py should give 8 CPU devices"
  graphdef, state, tx = train.init_state(config, 10, 4)
  train_step, _ = train.make_steps(graphdef, tx, False)
  batch = next(
    input_pipeline.train_batches(datasets["train"], global_batch=config.batch_size, seed=0, epoch=0)
  )
  rstate, m = train_step(parallel.replicate(state), parallel.shard(batch), jax.random.key(0))
  for name in ("params", "batch_stats", "opt_state"):
    for leaf in jax.tree.leaves(rstate[name]):
      leaf = np.asarray(leaf)
      for d in range(1, n):
        np.testing.assert_array_equal(leaf[d], leaf[0], err_msg=name)
  assert np.all(np.asarray(m["ok"])) and np.isfinite(np.asarray(m["loss"])).all()
  # The BN running means moved (momentum 0.9 from 0), i.e. the statistics were updated in the step.
  bn = np.asarray(jax.tree.leaves(rstate["batch_stats"])[0])[0]
  assert np.abs(bn).max() > 0


def test_training_loss_falls_and_outputs_are_written(uninterrupted) -> None:
  hist = uninterrupted["history"]
  assert [r["epoch"] for r in hist] == [1, 2, 3]
  assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.1
  assert hist[-1]["test_loss"] < hist[0]["test_loss"]
  assert all(r["images_per_s"] > 0 for r in hist)
  assert hist[-1]["lr"] == pytest.approx(0.1 * 0.2)  # decayed at epoch 2 in the tiny config
  workdir = uninterrupted["workdir"]
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["test_error"] for r in rows] == [r["test_error"] for r in hist]
  assert os.path.getsize(os.path.join(workdir, "test_error.png")) > 1000
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert json.load(open(os.path.join(workdir, "config.json")))["depth"] == 10


def test_resume_mid_epoch_gives_the_uninterrupted_parameters(
  tmp_path, datasets, uninterrupted
) -> None:
  workdir = str(tmp_path / "wrn_resume")
  first = train.train_and_evaluate(_config(max_steps=6), workdir, datasets=datasets)
  assert first["steps"] == 6 and len(first["history"]) == 1  # stopped inside epoch 2
  second = train.train_and_evaluate(_config(), workdir, datasets=datasets)
  assert second["steps"] == 12
  for name in ("params", "batch_stats"):
    for a, b in zip(
      jax.tree.leaves(second[name]), jax.tree.leaves(uninterrupted[name]), strict=True
    ):
      np.testing.assert_array_equal(a, b, err_msg=name)
  for r1, r2 in zip(second["history"], uninterrupted["history"], strict=True):
    for k in ("train_loss", "train_error", "test_loss", "test_error", "lr"):
      assert r1[k] == r2[k], k


def test_plot_runs_overlays_workdirs(uninterrupted, tmp_path, monkeypatch) -> None:
  from train.wrn import plot_runs

  out = tmp_path / "overlay.png"
  monkeypatch.setattr("sys.argv", ["plot_runs", "--out", str(out), uninterrupted["workdir"]])
  plot_runs.main()
  assert out.stat().st_size > 1000
  assert plot_runs.label_of(uninterrupted["workdir"]) == "sparseout q=2.5 p=0.3"


def test_learning_rate_schedule_is_the_wrn_recipe() -> None:
  from train.wrn.configs import wrn28_10_cifar10

  config = wrn28_10_cifar10.get_config()
  spe = 390  # 50000 // 128
  lr = train.learning_rate_schedule(config, spe)
  for epoch, want in [
    (0, 0.1),
    (59, 0.1),
    (60, 0.02),
    (119, 0.02),
    (120, 0.004),
    (160, 0.0008),
    (199, 0.0008),
  ]:
    assert float(lr(epoch * spe)) == pytest.approx(want, rel=1e-6), epoch
  assert float(lr(60 * spe - 1)) == pytest.approx(0.1)


def test_optimizer_is_torch_sgd_nesterov_with_l2() -> None:
  """Two steps against the closed form of torch.optim.SGD(lr, momentum, weight_decay, nesterov=True)."""
  import jax.numpy as jnp

  from train.wrn.configs import wrn28_10_cifar10

  tx = train.make_optimizer(wrn28_10_cifar10.get_config(), 390)
  w = jnp.array([1.0, -2.0])
  g1, g2 = jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0])
  lr, mu, wd = 0.1, 0.9, 5e-4
  opt = tx.init(w)
  u, opt = tx.update(g1, opt, w)
  d1 = g1 + wd * w
  buf = d1
  w1_want = w - lr * (d1 + mu * buf)
  np.testing.assert_allclose(w + u, w1_want, rtol=1e-6)
  w1 = w + u
  u, opt = tx.update(g2, opt, w1)
  d2 = g2 + wd * w1
  buf = mu * buf + d2
  np.testing.assert_allclose(w1 + u, w1 - lr * (d2 + mu * buf), rtol=1e-6)


def test_bad_config_is_named() -> None:
  with pytest.raises(ValueError, match="config.batch_size"):
    train.validate_config(_config(batch_size=12))
  with pytest.raises(ValueError, match="config.dtype"):
    train.validate_config(_config(dtype="float16"))
