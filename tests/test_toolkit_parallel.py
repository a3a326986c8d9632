"""train.common.parallel and train.common.data: pmap helpers on 4 CPU devices, process sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from train.common import data, parallel

N_DEV = 4


@pytest.fixture(scope="module")
def devices():
  devs = jax.local_devices()
  if len(devs) < N_DEV:
    pytest.fail(f"needs {N_DEV} CPU devices (tests/conftest.py sets XLA_FLAGS)")
  return devs[:N_DEV]


def _loss(w, x, y):
  return jnp.mean((x @ w - y) ** 2)


def test_pmap_step_equals_full_batch_step(devices):
  """A pmapped SGD step with pmean'd gradients equals one step on the whole batch."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 5)).astype(np.float32)
  y = rng.normal(size=(32, 3)).astype(np.float32)
  w = rng.normal(size=(5, 3)).astype(np.float32)

  def step(w, batch):
    g = jax.grad(_loss)(w, batch["x"], batch["y"])
    return w - 0.1 * parallel.pmean(g)

  p_step = jax.pmap(step, axis_name=parallel.AXIS, devices=devices)
  w_rep = parallel.replicate(w, devices)
  assert w_rep.shape == (N_DEV, 5, 3)
  out = p_step(w_rep, parallel.shard({"x": x, "y": y}, N_DEV))
  want = w - 0.1 * jax.grad(_loss)(w, x, y)
  np.testing.assert_allclose(parallel.unreplicate(out), want, rtol=1e-5, atol=1e-6)
  # every device holds the same copy after the pmean
  np.testing.assert_array_equal(np.asarray(out)[0], np.asarray(out)[N_DEV - 1])


def test_shard_unshard_roundtrip_and_error():
  x = np.arange(24).reshape(12, 2)
  s = parallel.shard({"x": x}, 4)
  assert s["x"].shape == (4, 3, 2)
  np.testing.assert_array_equal(parallel.unshard(s)["x"], x)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.shard({"x": x}, 5)


def test_device_keys_are_distinct_and_deterministic(devices):
  f = jax.pmap(
    lambda dummy, k: jax.random.key_data(parallel.device_key(k)),
    axis_name=parallel.AXIS,
    in_axes=(0, None),
    devices=devices,
  )
  dummy = np.zeros(N_DEV)
  a = np.asarray(f(dummy, jax.random.key(3)))
  assert len({tuple(r) for r in a}) == N_DEV
  np.testing.assert_array_equal(a, np.asarray(f(dummy, jax.random.key(3))))
  want = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(3), 2)))
  np.testing.assert_array_equal(a[2], want)


def test_axis_index_matches_device_position(devices):
  f = jax.pmap(
    lambda x: x * 0 + lax.axis_index(parallel.AXIS), axis_name=parallel.AXIS, devices=devices
  )
  np.testing.assert_array_equal(np.asarray(f(np.zeros(N_DEV))), np.arange(N_DEV))


def test_process_shards_make_up_the_global_batch():
  """2 processes' slices concatenated equal the 1-process batch, at every step; resume is exact."""
  arrays = {"x": np.arange(100)}
  one = list(data.iterate_epoch(arrays, 8, seed=1, epoch=2, process_index=0, process_count=1))
  p0 = list(data.iterate_epoch(arrays, 8, seed=1, epoch=2, process_index=0, process_count=2))
  p1 = list(data.iterate_epoch(arrays, 8, seed=1, epoch=2, process_index=1, process_count=2))
  assert len(one) == data.steps_per_epoch(100, 8) == 12
  for a, b, c in zip(one, p0, p1, strict=True):
    np.testing.assert_array_equal(np.sort(a["x"]), np.sort(np.concatenate([b["x"], c["x"]])))
  resumed = list(
    data.iterate_epoch(arrays, 8, seed=1, epoch=2, start_step=5, process_index=0, process_count=1)
  )
  for a, b in zip(one[5:], resumed, strict=True):
    np.testing.assert_array_equal(a["x"], b["x"])
  other_epoch = next(
    data.iterate_epoch(arrays, 8, seed=1, epoch=3, process_index=0, process_count=1)
  )
  assert not np.array_equal(other_epoch["x"], one[0]["x"])


def test_process_slice_and_eval_padding():
  slices = [data.process_slice(10, p, 3) for p in range(3)]
  assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 7), (7, 10)]
  batches = list(data.iterate_eval({"x": np.arange(10.0)}, 4))
  assert [b["x"].shape for b, _ in batches] == [(4,)] * 3
  assert sum(m.sum() for _, m in batches) == 10
  # multi-process eval: every process runs the same number of batches, even with uneven slices
  n = data.eval_num_batches(2001, 1000, process_count=2)
  assert n == 2
  for p in range(2):
    part = np.arange(2001.0)[data.process_slice(2001, p, 2)]
    assert len(list(data.iterate_eval({"x": part}, 1000, num_batches=n))) == n


def test_distributed_single_process_and_partial_config_error(monkeypatch):
  from train.common import distributed

  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  info = distributed.initialize()
  assert (
    info.process_count == 1 and info.is_main and info.local_device_count == jax.local_device_count()
  )
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  with pytest.raises(ValueError, match="process_id"):
    distributed.initialize()
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    distributed.initialize()
