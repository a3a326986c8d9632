"""Autoencoder model and training: q=2 sparseout == dropout, the loss falls, resume is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.autoencoder import Autoencoder, reconstruction_loss
from train.autoencoder import input_pipeline, train
from train.autoencoder.configs import default


@pytest.fixture(scope="module")
def small_data():
  d = input_pipeline.load_mnist("shipped")
  return {"train": d["train"][:2048], "test": d["test"][:1000]}


def _config(**kw):
  c = default.get_config()
  c.hidden, c.num_epochs, c.progress, c.train_eval_size = 32, 1, False, 1000
  c.update(kw)
  return c


def test_q2_forward_equals_dropout_bitwise():
  x = jax.random.uniform(jax.random.key(0), (8, 784))
  key = jax.random.key(7)
  a = Autoencoder(16, regularizer="dropout", rngs=nnx.Rngs(0))
  b = Autoencoder(16, regularizer="sparseout", q=2.0, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(a(x, key)[0], b(x, key)[0])
  # and the noise is real: the noisy output differs from the clean one
  assert not np.array_equal(a(x, key)[0], a(x)[0])


def test_q2_sweep_curve_equals_dropout(small_data, tmp_path):
  """Same seed, same data order: the whole per-epoch history of sparseout q=2 equals dropout's."""
  runs = {}
  for reg in ("dropout", "sparseout"):
    cfg = _config(regularizer=reg, q=2.0, num_epochs=1)
    runs[reg] = train.train_and_evaluate(cfg, str(tmp_path / reg), datasets=small_data)["history"]
  for a, b in zip(runs["dropout"], runs["sparseout"], strict=True):
    for k in (
      "eval/hoyer",
      "eval/loss",
      "eval/train_loss",
      "epoch/train_loss",
      "epoch/enc_kernel_norm",
    ):
      assert a.get(k) == b.get(k), (k, a.get(k), b.get(k))


def test_loss_falls_and_sparseout_q1_sparser_than_q3(small_data, tmp_path):
  hist = {}
  for q in (1.0, 3.0):
    cfg = _config(regularizer="sparseout", q=q, num_epochs=2, learning_rate=3e-3)
    hist[q] = train.train_and_evaluate(cfg, str(tmp_path / str(q)), datasets=small_data)["history"]
  for h in hist.values():
    losses = [row["eval/loss"] for row in h]
    assert (
      all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < 0.7 * losses[0]
    )
    assert h[-1]["eval/train_loss"] < h[1]["eval/train_loss"]
  assert hist[1.0][-1]["eval/hoyer"] > hist[3.0][-1]["eval/hoyer"]


def test_resume_after_stop_is_bit_exact(small_data, tmp_path):
  """Stop mid-epoch (max_steps), start again: the final parameters equal an uninterrupted run's."""
  cfg = _config(regularizer="sparseout", q=1.5, num_epochs=2)
  whole = train.train_and_evaluate(cfg, str(tmp_path / "whole"), datasets=small_data)
  part = train.train_and_evaluate(
    _config(regularizer="sparseout", q=1.5, num_epochs=2, max_steps=21),
    str(tmp_path / "part"),
    datasets=small_data,
  )
  assert part["steps"] == 21
  resumed = train.train_and_evaluate(cfg, str(tmp_path / "part"), datasets=small_data)
  assert resumed["steps"] == whole["steps"] == 32
  for a, b in zip(resumed["history"], whole["history"], strict=True):
    assert a == b, (a, b)
  np.testing.assert_array_equal(
    resumed["final_params"]["encoder"]["kernel"], whole["final_params"]["encoder"]["kernel"]
  )


def test_reconstruction_losses():
  x = jnp.array([[0.0, 1.0, 0.5]])
  big = jnp.array([[-50.0, 50.0, 0.0]])
  np.testing.assert_allclose(reconstruction_loss(big, x, "mse"), [0.0], atol=1e-6)
  assert np.isfinite(reconstruction_loss(jnp.array([[1e4, -1e4, 0.0]]), x, "bce")).all()
  with pytest.raises(ValueError, match="loss"):
    reconstruction_loss(big, x, "l1")


def test_bad_config_names_the_field():
  with pytest.raises(ValueError, match="config.regularizer"):
    train.validate_config(_config(regularizer="shakeout"))
  with pytest.raises(ValueError, match="config.rate"):
    train.validate_config(_config(rate=1.5))


def test_sparsity_record_is_the_hidden_layers_hoyer(small_data, tmp_path):
  """The Sparseout layer's record of its input (h, clean at evaluation) is the program's own Hoyer
  sparsity and zero fraction of h on the test set; with record_sparsity off there is none."""
  cfg = _config(regularizer="sparseout", q=1.5, num_epochs=1)
  hist = train.train_and_evaluate(cfg, str(tmp_path / "on"), datasets=small_data)["history"]
  for row in hist:
    assert row["eval/sparsity/noise/hoyer"] == pytest.approx(row["eval/hoyer"], rel=1e-5)
    assert row["eval/sparsity/noise/zero_fraction"] == pytest.approx(
      row["eval/zero_fraction"], rel=1e-5
    )
  assert (tmp_path / "on" / "sparsity.png").stat().st_size > 1000
  off = _config(regularizer="sparseout", q=1.5, num_epochs=1, record_sparsity=False)
  hist = train.train_and_evaluate(off, str(tmp_path / "off"), datasets=small_data)["history"]
  assert not any(k.startswith("eval/sparsity/") for k in hist[-1])
