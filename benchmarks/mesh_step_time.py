"""Step time of each program: the ``jax.jit``-over-a-mesh step against the earlier ``jax.pmap`` step.

For the autoencoder (default config), a WRN (``--wrn``, default WRN-10-2) and the LM (tiny config,
PTB windows) it builds the program's own train step twice on the same devices and the same batch:
the current one (``make_steps`` / ``make_train_step`` of ``train/``, jitted over the ``("data",)``
mesh) and the pmap step of an earlier checkout of the programs (``--old``, e.g. a
``git worktree add ../old-pmap <commit>``; its ``train/`` package is loaded under another name, with
this checkout's models and library, so only the parallel plumbing differs). Both run with
Sparseout on (q = 1.5). The two steps alternate round by round (``benchmarks._timing``); reported
are the median seconds per step of each and the new/old ratio per round, its median and 95 %
bootstrap interval, in wall and process-CPU time.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.mesh_step_time \\
      --old ../old-pmap --ptb ../shared/data/ptb

Writes ``benchmarks/results/mesh_step_time_<platform>.{md,json}``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import _timing, report
from train.common import data, parallel


def load_old(old_root: str):
  """The earlier checkout's ``train`` package, importable as ``old_train`` (a rewritten copy)."""
  tmp = tempfile.mkdtemp(prefix="old_train_")
  dst = os.path.join(tmp, "old_train")
  shutil.copytree(os.path.join(old_root, "train"), dst)
  for root, _, files in os.walk(dst):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        text = open(path).read()
        text = re.sub(r"\b(from|import) train\b", r"\1 old_train", text)
        text = re.sub(r"\btrain\.(common|wrn|lm|autoencoder)\b", r"old_train.\1", text)
        open(path, "w").write(text)
  sys.path.insert(0, tmp)
  return importlib.import_module("old_train")


def _runner(step, state, batch, key):
  box = {"state": state}

  def run(n: int) -> None:
    for _ in range(n):
      box["state"], m = step(box["state"], batch, key)
    jax.block_until_ready((box["state"], m))

  run(1)  # compile
  return run


def autoencoder(old_mod) -> dict:
  """Runners of the autoencoder's default config (H = 1024, batch 128, Sparseout q = 1.5)."""
  from train.autoencoder import input_pipeline, train
  from train.autoencoder.configs import default

  c = default.get_config()
  x = input_pipeline.load_mnist("shipped")["train"]
  batch = next(data.iterate_epoch({"x": x}, c.batch_size, 0, 0))
  runners = {}
  mesh = parallel.make_mesh()
  graphdef, params, rest = nnx.split(train.build_model(c), nnx.Param, ...)
  tx = train.make_optimizer(c)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  state = parallel.put_replicated(state, mesh)
  step, _ = train.make_steps(graphdef, rest, tx, c, parallel.shardings(state))
  key = parallel.replicate_key(jax.random.key(0), mesh)
  runners["jit"] = _runner(step, state, parallel.put_batch(batch, mesh), key)
  old = importlib.import_module("old_train.autoencoder.train")
  op = old_mod.common.parallel
  graphdef, params, rest = nnx.split(old.build_model(c), nnx.Param, ...)
  tx = old.make_optimizer(c)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  step, _ = old.make_steps(graphdef, rest, tx, c)
  runners["pmap"] = _runner(step, op.replicate(state), op.shard(batch), jax.random.key(0))
  return runners


def wrn(old_mod, depth: int, width: int, batch_size: int) -> dict:
  """Runners of a WRN-depth-width step on synthetic CIFAR-shaped batches (Sparseout q = 1.5)."""
  from train.wrn import augment, input_pipeline, train
  from train.wrn.configs import tiny

  c = tiny.get_config()
  c.depth, c.width, c.batch_size, c.q = depth, width, batch_size, 1.5
  ds = input_pipeline.synthetic(batch_size, 10, seed=0)
  batch = next(augment.raw_train_batches(ds, global_batch=batch_size, seed=0, epoch=0))
  mesh = parallel.make_mesh()
  graphdef, state, tx = train.init_state(c, 10, 100, mesh)
  step, _ = train.make_steps(graphdef, tx, False, state)
  key = parallel.replicate_key(jax.random.key(0), mesh)
  runners = {"jit": _runner(step, state, parallel.put_batch(batch, mesh), key)}
  old = importlib.import_module("old_train.wrn.train")
  op = old_mod.common.parallel
  c.flip = True  # (a field the earlier config did not have; unused by its step)
  graphdef, state, tx = old.init_state(c, 10, 100)
  step, _ = old.make_steps(graphdef, tx, False)
  runners["pmap"] = _runner(step, op.replicate(state), op.shard(batch), jax.random.key(0))
  return runners


def lm(old_mod, ptb: str) -> dict:
  """Runners of the LM's tiny config on PTB windows (fixed length, Sparseout q = 1.5 at every site)."""
  from train.lm import input_pipeline as ip
  from train.lm import train
  from train.lm.configs import tiny

  c = tiny.get_config()
  c.data_dir, c.q, c.variable_bptt = ptb, 1.5, False
  corpus = ip.load_corpus(c.dataset, c.data_dir)
  streams = ip.batchify(corpus.train[:20_000], c.batch_size)
  w = ip.make_window(streams, 0, c.bptt, c.bptt_bucket)
  mesh = parallel.make_mesh()
  graphdef, host, tx = train.init_state(c, len(corpus.vocab))
  state = train.place(host, mesh)
  step = train.make_train_step(graphdef, tx, c, state)
  batch = parallel.put_batch({"x": w.inputs, "y": w.targets}, mesh, axis=1)
  batch["length"] = parallel.put_replicated(np.int32(w.length), mesh)
  key = parallel.replicate_key(jax.random.key(0), mesh)
  runners = {"jit": _runner(step, state, batch, key)}
  old = importlib.import_module("old_train.lm.train")
  c.num_devices = 0
  graphdef, host, tx = old.init_state(c, len(corpus.vocab))
  layout = old.Layout(jax.local_devices(), c.batch_size)
  step = old.make_train_step(graphdef, tx, c)
  batch = old.device_batch(w, layout.n_dev)
  runners["pmap"] = _runner(step, layout.to_device(host), batch, jax.random.key(0))
  return runners


def main() -> None:
  """Parse the flags, time each program's two steps, write the results."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--old", required=True, help="root of the earlier (pmap) checkout")
  p.add_argument("--ptb", default=None, help="PTB folder (the LM is skipped without it)")
  p.add_argument("--wrn", default="10-2", help="WRN depth-width")
  p.add_argument("--wrn_batch", type=int, default=32)
  p.add_argument("--rounds", type=int, default=15)
  p.add_argument("--target_s", type=float, default=0.3, help="seconds per sample")
  p.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = p.parse_args()
  old_mod = load_old(args.old)
  depth, width = (int(v) for v in args.wrn.split("-"))
  programs = {
    "autoencoder": lambda: autoencoder(old_mod),
    f"wrn{depth}_{width}": lambda: wrn(old_mod, depth, width, args.wrn_batch),
  }
  if args.ptb:
    programs["lm_tiny"] = lambda: lm(old_mod, args.ptb)
  results = {}
  for name, build in programs.items():
    runners = build()
    units = {k: _timing.calibrate(r, args.target_s) for k, r in runners.items()}
    samples = _timing.alternating_rounds(runners, args.rounds, units)
    results[name] = {
      "median_s": _timing.medians(samples),
      "ratio_jit_over_pmap": {
        clock: {k: v for k, v in r.items() if k != "rounds"}
        for clock, r in _timing.paired_ratio(samples, "jit", "pmap").items()
      },
      "units": units,
    }
    r = results[name]["ratio_jit_over_pmap"]["wall"]
    print(f"{name}: jit/pmap {r['median']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]", flush=True)
  meta = report.metadata(args, devices=jax.device_count())
  rows = [
    (
      name,
      f"{1e3 * res['median_s']['pmap']['wall']:.2f}",
      f"{1e3 * res['median_s']['jit']['wall']:.2f}",
      report.ratio_cell(res["ratio_jit_over_pmap"]["wall"]),
      report.ratio_cell(res["ratio_jit_over_pmap"]["cpu"]),
    )
    for name, res in results.items()
  ]
  md = report.table(
    ("program", "pmap ms/step", "jit ms/step", "jit / pmap (wall)", "jit / pmap (CPU)"), rows
  )
  report.write(args.out, f"mesh_step_time_{jax.default_backend()}", meta, results, md, __doc__)


if __name__ == "__main__":
  main()
