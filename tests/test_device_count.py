"""The same run on 1, 2, 4 or 8 devices, with the noise on: every program's jitted step over the mesh.

Each program's step is ``jax.jit`` over a ``("data",)`` mesh with the global batch split over it;
the noise masks are drawn for the global batch (each device making its shard's bits of the same
draw) and BatchNorm sees the global batch's statistics. So the arithmetic is the same on any
number of devices except the order in which the all-reduces add the devices' partial sums: the
parameters after a few steps agree to float32 rounding carried through those steps. The
tolerances below are that, stated per program (measured values in docs/scaling.md), and every
test also checks that training moved the parameters far more than the tolerance.
"""

from __future__ import annotations

import jax
import program_steps
import pytest
from data_root import need

from train.common import parallel

COUNTS = (1, 2, 4, 8)


@pytest.fixture(scope="module", autouse=True)
def eight():
  if len(jax.local_devices()) < 8:
    pytest.fail("needs the 8 CPU devices of tests/conftest.py")


def _check(finals: dict[int, dict], initial: dict, atol: float, name: str) -> None:
  """Every device count's parameters equal the 1-device ones within ``atol``; training moved them."""
  diffs = {n: program_steps.max_diff(finals[n], finals[1]) for n in finals}
  moved = program_steps.max_diff(finals[1], initial)
  print(f"{name}: max |params(n) - params(1)| {diffs}, moved {moved:.3g}")
  assert moved > 100 * atol, moved
  for n, d in diffs.items():
    assert d <= atol, (n, d)


def _autoencoder(num_devices: int, steps: int):
  state, initial = program_steps.autoencoder(num_devices, steps)
  return parallel.to_host(state["params"]), initial


def test_autoencoder_with_sparseout_is_the_same_on_1_2_4_8_devices() -> None:
  # 5 Adam steps: a last-bit change in a gradient moves an update by ~1 ulp of lr (1e-3), so a few
  # 1e-7 per step; measured 1.3e-6.
  finals = {}
  for n in COUNTS:
    finals[n], initial = _autoencoder(n, steps=5)
  _check(finals, initial, atol=1e-5, name="autoencoder")


def _wrn(num_devices: int, steps: int):
  from train.wrn import augment, train
  from train.wrn.configs import tiny

  c = tiny.get_config()
  c.num_devices = num_devices
  mesh = parallel.make_mesh(num_devices)
  ds = train.load_datasets(c)["train"]
  graphdef, state, tx = train.init_state(c, 10, 4, mesh)
  initial = parallel.to_host(state["params"])
  step, _ = train.make_steps(graphdef, tx, False, state)
  key = parallel.replicate_key(jax.random.key(0), mesh)
  batches = augment.raw_train_batches(ds, global_batch=c.batch_size, seed=0, epoch=0)
  for batch in list(batches)[:steps]:
    state, m = step(state, parallel.put_batch(batch, mesh), key)
  assert bool(m["ok"])
  return parallel.to_host({"params": state["params"], "bn": state["batch_stats"]}), {
    "params": initial,
    "bn": parallel.to_host(state["batch_stats"]),
  }


@pytest.mark.slow
def test_wrn_with_sparseout_is_the_same_on_1_2_4_8_devices() -> None:
  finals = {}
  for n in COUNTS:
    finals[n], initial = _wrn(n, steps=3)
  initial["bn"] = finals[1]["bn"]  # (the BN statistics are compared, not used for "moved")
  _check(finals, initial, atol=WRN_ATOL, name="wrn")


# BatchNorm over 16 images amplifies a last-bit difference of the batch moments; 3 SGD steps at
# lr 0.1. Measured 1.2e-7 (docs/scaling.md).
WRN_ATOL = 1e-5


def _lm(num_devices: int, steps: int):
  state, initial = program_steps.lm(num_devices, steps)
  return parallel.to_host({"params": state["params"], "carry": state["carry"]}), {
    "params": initial,
    "carry": parallel.to_host(state["carry"]),
  }


@pytest.mark.slow
def test_lm_with_sparseout_is_the_same_on_1_2_4_8_devices() -> None:
  need("ptb")
  finals = {}
  for n in COUNTS:
    finals[n], initial = _lm(n, steps=3)
  initial["carry"] = finals[1]["carry"]
  # 3 clipped SGD steps at lr 30 through an LSTM; a last-bit difference in a gradient moves an
  # update by ~1 ulp of lr * |g|, and the next steps carry it on. Measured 1.1e-5 on 8 devices
  # (benchmarks/results/device_count_cpu.md), 2.5e-6 of how far the steps moved the parameters.
  _check(finals, initial, atol=5e-5, name="lm")
