"""Tests of train/wrn: the jitted step keeps the state replicated, the loss falls, resume == uninterrupted."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from train.common import metrics, parallel
from train.wrn import augment, train
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


def test_train_step_over_the_mesh_keeps_the_state_replicated(datasets) -> None:
  config = _config()
  n = jax.local_device_count()
  assert n >= 4, "tests/conftest.py should give 8 CPU devices"
  mesh = parallel.make_mesh()
  graphdef, state, tx = train.init_state(config, 10, 4, mesh)
  train_step, _ = train.make_steps(graphdef, tx, False, state)
  batch = next(
    augment.raw_train_batches(datasets["train"], global_batch=config.batch_size, seed=0, epoch=0)
  )
  key = parallel.replicate_key(jax.random.key(0), mesh)
  state, m = train_step(state, parallel.put_batch(batch, mesh), key)
  for name in ("params", "batch_stats", "opt_state"):
    for leaf in jax.tree.leaves(state[name]):
      assert leaf.is_fully_replicated and len(leaf.sharding.device_set) == n, name
      for shard in leaf.addressable_shards[1:]:
        np.testing.assert_array_equal(shard.data, leaf.addressable_shards[0].data, err_msg=name)
  assert bool(m["ok"]) and np.isfinite(float(m["loss"]))
  # The BN running means moved (momentum 0.9 from 0), i.e. the statistics were updated in the step.
  bn = parallel.to_host(jax.tree.leaves(state["batch_stats"])[0])
  assert np.abs(bn).max() > 0


@pytest.mark.slow
def test_epochs_whose_steps_were_all_skipped_are_logged_plotted_and_rerun(
  tmp_path, datasets
) -> None:
  # lr 1e30: the first step's update makes every later loss non-finite, so epochs 2 and 3 skip
  # every step; the run must finish, plot, and a rerun must find nothing left to do.
  config = _config(learning_rate=1e30, skip_nonfinite=True)
  out = train.train_and_evaluate(config, str(tmp_path), datasets=datasets)
  assert out["skipped_steps"] == 11 and [r["epoch"] for r in out["history"]] == [1, 2, 3]
  assert "epoch/train_error" in out["history"][0]
  assert all("epoch/train_error" not in r for r in out["history"][1:])
  assert os.path.getsize(tmp_path / "test_error.png") > 1000
  again = train.train_and_evaluate(config, str(tmp_path), datasets=datasets)
  assert again["steps"] == 12
  assert json.dumps(again["history"]) == json.dumps(out["history"])  # (NaN != NaN)


def test_training_loss_falls_and_outputs_are_written(uninterrupted) -> None:
  hist = uninterrupted["history"]
  assert [r["epoch"] for r in hist] == [1, 2, 3]
  assert hist[-1]["epoch/train_loss"] < hist[0]["epoch/train_loss"] - 0.1
  # (12 steps on 64 synthetic images move the 16-image test loss by less than its noise: not asserted.)
  assert all(np.isfinite(r["eval/loss"]) and 0 <= r["eval/error"] <= 100 for r in hist)
  assert all(r["epoch/images_per_s"] > 0 for r in hist)
  # The tiny config drops at the start of (1-based) epoch 2.
  assert [r["epoch/lr"] for r in hist] == pytest.approx([0.1, 0.1 * 0.2, 0.1 * 0.2])
  workdir = uninterrupted["workdir"]
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["eval/error"] for r in rows if "eval/error" in r] == [r["eval/error"] for r in hist]
  # Every block's Sparseout records its input's sparsity at each evaluation, and they are plotted.
  blocks = {k.split("/")[3] for k in hist[-1] if k.startswith("eval/sparsity/blocks/")}
  assert blocks == {"0", "1", "2"}
  assert all(0.0 < r["eval/sparsity/blocks/0/noise/hoyer"] < 1.0 for r in hist)
  assert 0.0 < hist[-1]["eval/sparsity/blocks/0/noise/zero_fraction"] < 1.0  # after a ReLU
  assert os.path.getsize(os.path.join(workdir, "sparsity.png")) > 1000
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
    for k in ("epoch/train_loss", "epoch/train_error", "eval/loss", "eval/error", "epoch/lr"):
      assert r1[k] == r2[k], k


def test_plot_runs_overlays_workdirs(uninterrupted, tmp_path, monkeypatch) -> None:
  from train.wrn import plot_runs

  out = tmp_path / "overlay.png"
  monkeypatch.setattr("sys.argv", ["plot_runs", "--out", str(out), uninterrupted["workdir"]])
  plot_runs.main()
  assert out.stat().st_size > 1000
  assert plot_runs.label_of(uninterrupted["workdir"]) == "sparseout q=2.5 p=0.3"


def test_learning_rate_drops_at_the_start_of_epochs_60_120_160() -> None:
  """The reference decays when ``epoch in [60, 120, 160]`` at the start of 1-based epoch ``epoch``:
  epochs 1-59 at 0.1, 60-119 at 0.02, 120-159 at 0.004, 160-200 at 0.0008."""
  from train.wrn.configs import wrn28_10_cifar10

  config = wrn28_10_cifar10.get_config()
  spe = 390  # 50000 // 128
  lr = train.learning_rate_schedule(config, spe)
  for epoch1, want in [(1, 0.1), (59, 0.1), (60, 0.02), (119, 0.02), (120, 0.004), (160, 0.0008)]:
    first, last = (epoch1 - 1) * spe, epoch1 * spe - 1
    assert float(lr(first)) == pytest.approx(want, rel=1e-6), epoch1
    assert float(lr(last)) == pytest.approx(want, rel=1e-6), epoch1


def test_optimizer_is_torch_sgd_nesterov_with_l2_and_a_fresh_buffer_at_each_drop() -> None:
  """Against the closed form of torch.optim.SGD(lr, momentum, weight_decay, nesterov=True), rebuilt (so
  its momentum buffer starts from zero) at each drop, as the reference's ``create_optimizer``."""
  import jax.numpy as jnp

  config = _config(lr_boundaries=(2,), weight_decay=5e-4)  # drop at step 2 with 2 steps per epoch
  tx = train.make_optimizer(config, 2)
  lr, mu, wd = 0.1, 0.9, 5e-4
  w = jnp.array([1.0, -2.0])
  opt = tx.init(w)
  buf = None
  for step, g in enumerate([jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0]), jnp.array([0.3, 0.1])]):
    u, opt = tx.update(g, opt, w)
    d = g + wd * w
    fresh = step == 2  # the first step of 1-based epoch 2: new optimizer, lr x0.2
    buf = d if buf is None or fresh else mu * buf + d
    step_lr = lr * (0.2 if step >= 2 else 1.0)
    np.testing.assert_allclose(w + u, w - step_lr * (d + mu * buf), rtol=1e-6, err_msg=str(step))
    w = w + u


def test_initialisation_is_the_references() -> None:
  """Convs and the dense layer He-normal over fan-in (torch's kaiming_normal_), BN scale U[0, 1), biases 0."""
  from flax import nnx

  from models.wrn import WideResNet

  model = WideResNet(10, 8, 10, rngs=nnx.Rngs(0))
  k = np.asarray(model.blocks[1].conv1.kernel[...])  # (3, 3, in, out) = (3, 3, 256, 256)
  fan_in = 3 * 3 * k.shape[2]
  assert k.shape[2] == k.shape[3] == 256
  assert k.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.02)
  assert np.abs(k).max() > 2.5 * np.sqrt(2.0 / fan_in)  # a normal, not a 2-sigma truncated one
  head = np.asarray(model.head.kernel[...])
  assert head.std() == pytest.approx(np.sqrt(2.0 / head.shape[0]), rel=0.1)
  assert np.all(np.asarray(model.head.bias[...]) == 0)
  scale = np.concatenate([np.asarray(bn.scale[...]) for b in model.blocks for bn in (b.bn0, b.bn1)])
  assert scale.min() >= 0.0 and scale.max() < 1.0
  assert scale.mean() == pytest.approx(0.5, abs=0.05) and scale.std() == pytest.approx(
    0.289, abs=0.03
  )
  assert np.all(np.asarray(model.blocks[0].bn0.bias[...]) == 0)


def test_bad_config_is_named() -> None:
  with pytest.raises(ValueError, match="config.batch_size"):
    train.validate_config(_config(batch_size=12))
  with pytest.raises(ValueError, match="config.dtype"):
    train.validate_config(_config(dtype="float16"))


def test_paper_configs_are_the_papers_runs_and_the_wrn_reference_is_one_override_away() -> None:
  """Paper 4.3: SGD with a mini-batch of 64, float32, the authors' backward rule; the WRN
  reference's batch of 128 is the ``:wrn_reference`` variant of the same file."""
  from ml_collections import config_flags

  from train.wrn.configs import wrn28_10_cifar10, wrn28_10_cifar100

  for mod in (wrn28_10_cifar10, wrn28_10_cifar100):
    c = mod.get_config()
    assert (c.batch_size, c.dtype, c.gradient, c.depth, c.width) == (
      64,
      "float32",
      "reference",
      28,
      10,
    )
    r = mod.get_config("wrn_reference")
    assert r.batch_size == 128 and r.dtype == "auto"
    assert {k: v for k, v in r.items() if k not in ("batch_size", "dtype")} == {
      k: v for k, v in c.items() if k not in ("batch_size", "dtype")
    }
  path = os.path.join(os.path.dirname(wrn28_10_cifar10.__file__), "wrn28_10_cifar10.py")
  loaded = config_flags.config_flags._ConfigFileParser("config").parse(f"{path}:wrn_reference")
  assert loaded.batch_size == 128
