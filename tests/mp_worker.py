"""Subprocess body for tests/test_multiprocess.py: one process of a (1 or 2)-process job.

Run as ``python tests/mp_worker.py ROOT PROGRAM[,PROGRAM...]`` from the repo root with ``XLA_FLAGS``
giving this process its CPU devices and, for a multi-process job, ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set (read by ``train.common.distributed``). It writes
``ROOT/probe.json`` (how this topology's all-reduce rounds) and trains each named program's tiny
config in ``ROOT/<program>``, leaving its final checkpoint there.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.getcwd())

from data_root import DATA  # tests/, this script's folder, is on sys.path

from train.common import distributed

# 1, 2^-24, 2^-24, 2^-24 in float32: left to right the sum stays 1.0, pairwise it is 1 + 2^-23. So the
# probe tells which order this topology's all-reduce adds the devices' values in.
PROBE = [1.0, 2.0**-24, 2.0**-24, 2.0**-24]

PTB = str(DATA / "ptb")  # the tests' data folder (SPARSEOUT_DATA, else ../shared/data)


def tiny_config(program: str):
  """The program's tiny config, cut to a few steps (the same in every topology)."""
  if program == "autoencoder":
    from train.autoencoder.configs import default

    c = default.get_config()
    c.hidden, c.batch_size, c.max_steps = 16, 16, 5
    c.train_eval_size, c.eval_batch_size, c.progress = 16, 1000, False
    c.regularizer, c.rate, c.q = "sparseout", 0.5, 1.5  # the noise on
  elif program == "lm":
    from train.lm.configs import tiny

    c = tiny.get_config()
    c.data_dir, c.num_epochs, c.max_steps_per_epoch = PTB, 1, 3
    c.max_eval_tokens, c.q = 100, 1.5
  elif program == "wrn":
    from train.wrn.configs import tiny

    c = tiny.get_config()
    c.max_steps = 3
  else:
    raise ValueError(f"unknown program {program!r}")
  return c


def probe() -> list[float]:
  """Sum of PROBE over the job's 4 devices (each holds one entry), jitted over the data mesh."""
  import jax
  import numpy as np

  from train.common import parallel

  mesh = parallel.make_mesh()
  n = jax.local_device_count()
  mine = np.asarray(PROBE, np.float32)[jax.process_index() * n : (jax.process_index() + 1) * n]
  out = jax.jit(lambda x: x.sum())(parallel.put_batch(mine, mesh))
  return [float(parallel.to_host(out))]


def main() -> None:
  """Initialise the job, record the probe, train each program."""
  root, programs = sys.argv[1], sys.argv[2].split(",")
  os.environ.setdefault("TQDM_DISABLE", "1")
  info = distributed.initialize()
  if info.is_main:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "probe.json"), "w") as f:
      json.dump({"psum": probe(), "processes": info.process_count}, f)
  else:
    probe()  # collectives need every process
  import importlib

  for program in programs:
    train = importlib.import_module(f"train.{program}.train")
    train.train_and_evaluate(tiny_config(program), os.path.join(root, program))


if __name__ == "__main__":
  main()
