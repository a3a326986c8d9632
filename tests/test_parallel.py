"""train.common.parallel and train.common.data: the data mesh on 4 CPU devices, process sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_jit_step_over_the_mesh_equals_the_unsharded_step(devices):
  """An SGD step jitted over a 4-device mesh (batch split, weights replicated) equals the step on
  one device, to the all-reduce's rounding; the result stays replicated."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 5)).astype(np.float32)
  y = rng.normal(size=(32, 3)).astype(np.float32)
  w = rng.normal(size=(5, 3)).astype(np.float32)

  def step(w, batch):
    return w - 0.1 * jax.grad(_loss)(w, batch["x"], batch["y"])

  mesh = parallel.make_mesh(N_DEV)
  w_rep = parallel.put_replicated(w, mesh)
  batch = parallel.put_batch({"x": x, "y": y}, mesh)
  assert batch["x"].sharding.spec[0] == parallel.AXIS
  assert [s.data.shape for s in batch["x"].addressable_shards] == [(8, 5)] * N_DEV
  out = jax.jit(step, out_shardings=parallel.replicated(mesh))(w_rep, batch)
  want = w - 0.1 * jax.grad(_loss)(w, x, y)
  np.testing.assert_allclose(parallel.to_host(out), want, rtol=1e-5, atol=1e-6)
  assert out.is_fully_replicated


def test_put_batch_splits_the_named_axis_and_checks_divisibility(devices):
  mesh = parallel.make_mesh(N_DEV)
  x = np.arange(2 * 12).reshape(2, 12)  # time-major: the batch is axis 1
  g = parallel.put_batch(x, mesh, axis=1)
  assert g.shape == (2, 12) and [s.data.shape for s in g.addressable_shards] == [(2, 3)] * N_DEV
  np.testing.assert_array_equal(parallel.to_host(g), x)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.put_batch(np.zeros(6), mesh)
  with pytest.raises(ValueError, match="num_devices"):
    parallel.make_mesh(jax.local_device_count() + 1)


def test_the_mesh_spans_every_device_by_default():
  assert parallel.make_mesh().devices.size == jax.device_count()
  assert parallel.make_mesh(2).shape == {parallel.AXIS: 2}


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
