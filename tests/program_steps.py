"""A few noisy train steps of the programs' own jitted steps on a CPU mesh, for the tests that
compare layouts: the device count (tests/test_device_count.py) and FSDP (tests/test_fsdp.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from data_root import DATA
from flax import nnx

from train.common import data, parallel


def max_diff(a, b) -> float:
  """The largest absolute difference between two pytrees' leaves (float64)."""
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def autoencoder(num_devices: int, steps: int, param_sharding: str = "replicated"):
  """``steps`` Adam steps of the autoencoder (Sparseout q = 1.5): ``(device state, initial params)``."""
  from train.autoencoder import input_pipeline, train
  from train.autoencoder.configs import default

  c = default.get_config()
  c.hidden, c.batch_size, c.regularizer, c.rate, c.q = 32, 64, "sparseout", 0.5, 1.5
  mesh = parallel.make_mesh(num_devices)
  graphdef, params, rest = nnx.split(train.build_model(c), nnx.Param, ...)
  initial = jax.tree.map(np.asarray, params)
  tx = train.make_optimizer(c)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  state = parallel.put_state(state, mesh, param_sharding)
  step, _ = train.make_steps(graphdef, rest, tx, c, parallel.shardings(state))
  x = input_pipeline.load_mnist("shipped")["train"]
  key = parallel.replicate_key(jax.random.key(0), mesh)
  for batch in list(data.iterate_epoch({"x": x}, 64, 0, 0))[:steps]:
    state, m = step(state, parallel.put_batch(batch, mesh), key)
  assert bool(m["ok"])
  return state, initial


def lm(num_devices: int, steps: int, param_sharding: str = "replicated"):
  """``steps`` clipped SGD steps of the tiny LM on PTB (Sparseout q = 1.5 at every site, the
  weight drop included): ``(device state, initial host params)``."""
  from train.lm import input_pipeline as ip
  from train.lm import train
  from train.lm.configs import tiny

  c = tiny.get_config()
  c.data_dir, c.num_devices, c.variable_bptt, c.q = str(DATA / "ptb"), num_devices, False, 1.5
  mesh = parallel.make_mesh(num_devices)
  corpus = ip.load_corpus(c.dataset, c.data_dir)
  graphdef, host, tx = train.init_state(c, len(corpus.vocab))
  state = train.place(host, mesh, param_sharding)
  step = train.make_train_step(graphdef, tx, c, state)
  key = parallel.replicate_key(jax.random.key(0), mesh)
  streams = ip.batchify(corpus.train[:20_000], c.batch_size)
  for begin, length in ip.train_windows(streams, c.bptt, c.seed, 1, False)[:steps]:
    w = ip.make_window(streams, begin, length, c.bptt_bucket)
    batch = parallel.put_batch({"x": w.inputs, "y": w.targets}, mesh, axis=1)
    batch["length"] = parallel.put_replicated(np.int32(w.length), mesh)
    state, m = step(state, batch, key)
  assert bool(m["ok"])
  return state, host["params"]
