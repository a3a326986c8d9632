"""The WRN sparsity study (train/wrn/study.py): padded MNIST, the block probe, tables from the runs'
files. Tiny mode end to end on the shipped digits."""

import gzip
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.wrn import WideResNet
from train.common import metrics as metrics_lib
from train.common import study as st
from train.wrn import mnist, study
from train.wrn.configs import study_tiny


def _paired(values, baseline, digits=3):
  return st.fmt_interval(*st.paired_difference(values, baseline), digits)


def test_mnist32_is_the_shipped_digits_padded_and_split():
  data = mnist.load_mnist32(train_size=100, test_size=50)
  tr, te = data["train"], data["test"]
  assert tr.images.shape == (100, 32, 32, 3) and te.images.shape == (50, 32, 32, 3)
  raw = np.frombuffer(
    gzip.open(mnist.SHIPPED_DIR / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16
  ).reshape(-1, 28, 28)
  np.testing.assert_array_equal(tr.images[:, 2:30, 2:30, 1], raw[:100])
  np.testing.assert_array_equal(te.images[:, 2:30, 2:30, 0], raw[-50:])
  assert (tr.images[:, :2].max(), tr.images[:, 30:].max(), tr.images[:, :, :2].max()) == (0, 0, 0)
  assert (tr.images[..., 0] == tr.images[..., 2]).all()
  assert set(np.unique(tr.labels)) <= set(range(10)) and len(np.unique(tr.labels)) == 10


def test_mnist32_refuses_a_damaged_file_and_bad_sizes(tmp_path):
  for name, _, _ in mnist.FILES.values():
    shutil.copy(mnist.SHIPPED_DIR / name, tmp_path / name)
  with open(tmp_path / mnist.FILES["labels"][0], "r+b") as f:
    f.seek(100)
    f.write(b"\x00\x01")
  with pytest.raises(ValueError, match="sha256"):
    mnist.load_mnist32(str(tmp_path))
  with pytest.raises(ValueError, match="train_size"):
    mnist.load_mnist32(train_size=9000)
  with pytest.raises(ValueError, match="test_size"):
    mnist.load_mnist32(test_size=0)


def test_block_activations_feed_the_noise_layer():
  """The probe's activation is what the block's noise layer receives (recorded by a stand-in)."""
  model = WideResNet(10, 1, 10, regularizer="sparseout", rate=0.3, q=1.5, rngs=nnx.Rngs(params=0))
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  seen = []

  class Recorder(nnx.Module):
    def __call__(self, a, deterministic=None, rngs=None):
      seen.append(a)
      return a

  for block in model.blocks:
    block.noise = Recorder()

  @jax.jit  # one compilation instead of one per eager op
  def probe_and_forward(state, x):
    m = nnx.merge(graphdef, state)
    acts = study.block_activations(m, x)
    seen.clear()
    m(x, train=False)
    return acts, list(seen)

  graphdef, state = nnx.split(model)
  acts, seen = probe_and_forward(state, x)
  assert sorted(acts) == ["block0", "block1", "block2"]
  for b, a in enumerate(seen):
    np.testing.assert_allclose(acts[f"block{b}"], a, rtol=1e-6, atol=1e-6)
    assert float(jnp.min(a)) == 0.0  # after a ReLU


def _cells(table: str, first: str) -> list[str]:
  for line in table.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if cells[0] == first:
      return cells
  raise AssertionError(f"no row {first} in\n{table}")


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
  out = study.run_study(study_tiny.get_config(), str(tmp_path))
  for kind in ("plot", "wrn", "json", "paired_plot"):
    assert os.path.getsize(out["paths"][kind]) > 300, kind
  table = open(out["paths"]["wrn"]).read()
  per_run = {}
  for name in ("none", "sparseout_q1.5"):
    errors, hoyer, zeros = [], [], []
    for seed in (0, 1):
      wd = tmp_path / "runs" / f"{name}_s{seed}"
      rows = metrics_lib.read_jsonl(wd / "metrics.jsonl")
      rows = [r for r in rows if "test_error" in r or "eval/error" in r]
      assert [r["epoch"] for r in rows] == [1]
      errors.append(rows[-1].get("test_error", rows[-1].get("eval/error")))
      sp = study.read_run(str(wd))["sparsity"]
      hoyer.append(sp["block2"]["hoyer"])
      zeros.append(sp["block0"]["zero_fraction"])
      assert 0.0 <= sp["block2"]["hoyer"] <= 1.0 and 0.0 < sp["block0"]["zero_fraction"] < 1.0
    cells = _cells(table, name)
    assert cells[1] == "2" and cells[2] == st.fmt(errors, 2)
    assert cells[4] == st.fmt(zeros, 3) and cells[7] == st.fmt(hoyer, 3)
    per_run[name] = (errors, hoyer)
  # The paired table: sparseout minus the baseline (no noise here), seed by seed.
  cells = _cells(open(out["paths"]["paired"]).read(), "sparseout_q1.5")
  (err_q, hoyer_q), (err_none, hoyer_none) = per_run["sparseout_q1.5"], per_run["none"]
  assert cells[1] == "2" and cells[2] == _paired(err_q, err_none, 2)
  assert cells[5] == _paired(hoyer_q, hoyer_none, 3)
  assert out["paired"] == open(out["paths"]["paired"]).read().strip()
