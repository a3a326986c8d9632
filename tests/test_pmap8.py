"""Every program's pmapped train step over the 8 CPU devices of tests/conftest.py.

The WRN's own tests already pmap over all 8 devices (tests/test_wrn_train.py); here the autoencoder
and the language model do too: the replicas stay identical, and without noise 8 devices give the
1-device result on the same global batch (up to the order of the gradient all-reduce's additions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_root import DATA, need
from flax import nnx

from train.common import data, parallel

PTB = str(DATA / "ptb")


@pytest.fixture(scope="module")
def eight():
  devs = jax.local_devices()
  if len(devs) < 8:
    pytest.fail("needs the 8 CPU devices of tests/conftest.py")
  return devs[:8]


def _ae(regularizer: str, devices: list):
  from train.autoencoder import input_pipeline, train
  from train.autoencoder.configs import default

  c = default.get_config()
  c.hidden, c.batch_size, c.regularizer, c.rate, c.q = 32, 64, regularizer, 0.5, 1.5
  graphdef, params, rest = nnx.split(train.build_model(c), nnx.Param, ...)
  tx = train.make_optimizer(c)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  step = jax.pmap(
    train.make_steps(graphdef, rest, tx, c)[0].__wrapped__,
    axis_name=parallel.AXIS,
    in_axes=(0, 0, None),
    devices=devices,
  )
  x = input_pipeline.load_mnist("shipped")["train"]
  rstate = parallel.replicate(state, devices)
  key = jax.random.key(0)
  for batch in list(data.iterate_epoch({"x": x}, 64, 0, 0, process_index=0, process_count=1))[:3]:
    rstate, m = step(rstate, parallel.shard(batch, len(devices)), key)
  return rstate, m


def test_autoencoder_pmap_over_8_devices(eight) -> None:
  # (tests/test_autoencoder_sweep.py trains sparseout itself over these 8 devices.)
  s8, m = _ae("none", eight)
  for leaf in jax.tree.leaves(s8):
    leaf = np.asarray(leaf)
    for d in range(1, 8):
      np.testing.assert_array_equal(leaf[d], leaf[0])
  assert np.all(np.asarray(m["ok"]))
  # 3 Adam steps on 8 devices equal those on 1 device (up to the all-reduce's addition order).
  s1, _ = _ae("none", eight[:1])
  for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1), strict=True):
    np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lm_pmap_over_8_devices_matches_one(eight, tmp_path) -> None:
  need("ptb")
  from train.common import checkpoint
  from train.lm import train
  from train.lm.configs import tiny

  def config(num_devices):
    c = tiny.get_config()
    c.data_dir, c.num_epochs, c.max_steps_per_epoch, c.max_eval_tokens = PTB, 1, 3, 100
    c.variable_bptt, c.num_devices = False, num_devices
    c.rate_e = c.rate_i = c.rate_h = c.rate_o = c.rate_w = 0.0
    return c

  finals = []
  for n in (8, 1):
    c = config(n)
    train.train_and_evaluate(c, str(tmp_path / str(n)))
    _, target, _ = train.init_state(c, 10_000)
    ck = checkpoint.Checkpointer(str(tmp_path / str(n) / "checkpoints"))
    finals.append(ck.restore(target)[0])
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
