"""Table 1 (paper section 4.2): training cost of backprop, dropout, sparseout and Bridgeout autoencoders.

For H in (1024, 2048) it builds the autoencoder program's own train step (jitted over the device mesh) for each method,
compiles it, then times windows of training steps on MNIST in rounds that alternate the methods
(so a background load hits all of them alike). Reported per method: the median seconds per step over
the rounds, the seconds per epoch it implies (steps per epoch x median; an epoch is
len(train) / batch steps), and the ratio to backprop measured in the same run. Bridgeout gets
shorter windows (it is an order of magnitude slower); the per-step medians make them comparable.

    python -m benchmarks.autoencoder_cost                     # full MNIST from ../shared/data/mnist if present
    python -m benchmarks.autoencoder_cost --rounds 3 --steps 20 --hidden 1024

Writes ``benchmarks/results/autoencoder_cost_<platform>.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import _timing, report
from train.autoencoder import input_pipeline, train
from train.autoencoder.configs import default
from train.common import data, parallel

METHODS = (
  ("backprop", "none"),
  ("dropout", "dropout"),
  ("sparseout", "sparseout"),
  ("bridgeout", "bridgeout"),
)
PAPER = {1024: (5.2, 5.3, 5.8, 31.6), 2048: (5.6, 5.6, 6.0, 57.2)}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MESH = parallel.make_mesh()


def _setup(hidden: int, regularizer: str, q: float, rate: float, batch: int):
  cfg = default.get_config()
  cfg.hidden, cfg.regularizer, cfg.q, cfg.rate, cfg.batch_size = hidden, regularizer, q, rate, batch
  train.validate_config(cfg)
  graphdef, params, rest = nnx.split(train.build_model(cfg), nnx.Param, ...)
  tx = train.make_optimizer(cfg)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  state = parallel.put_replicated(state, MESH)
  step, _ = train.make_steps(graphdef, rest, tx, cfg, parallel.shardings(state))
  return state, step


def _window(state, step, batches, key):
  """Run the steps over ``batches``; the state once they are finished."""
  for b in batches:
    state, m = step(state, b, key)
  jax.block_until_ready((state, m))
  return state


def _time_methods(hidden: int, methods, args, batches, key) -> dict:
  """Per-step wall and CPU seconds of each method's windows, in alternating rounds (_timing)."""
  setups = {}
  for name, reg in methods:
    state, step = _setup(hidden, reg, args.q, args.rate, args.batch)
    state = _window(state, step, batches[:2], key)  # compile + warm up
    setups[name] = [state, step, 0]  # state, step, windows run

  def runner(name: str):
    def run(n: int) -> None:
      s = setups[name]
      start = (s[2] * args.steps) % (len(batches) - n)
      s[0] = _window(s[0], s[1], batches[start : start + n], key)
      s[2] += 1

    return run

  def progress(r: int, t: dict) -> None:
    print(
      f"H={hidden} round {r + 1}/{args.rounds}: "
      + ", ".join(
        f"{k} {v['wall'][-1] * 1e3:.1f} ms/step (cpu {v['cpu'][-1] * 1e3:.0f})"
        for k, v in t.items()
      ),
      flush=True,
    )

  units = {n: max(2, args.steps // 8) if n == "bridgeout" else args.steps for n, _ in methods}
  return _timing.alternating_rounds(
    {n: runner(n) for n, _ in methods}, args.rounds, units, progress=progress
  )


def main() -> None:
  """Parse flags, run the alternating benchmark, print and write the table."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--hidden", type=int, nargs="+", default=[1024, 2048])
  ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (median over them)")
  ap.add_argument(
    "--steps", type=int, default=40, help="steps per timed window (Bridgeout: steps // 8, >= 2)"
  )
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--rate", type=float, default=0.5)
  ap.add_argument("--q", type=float, default=1.5, help="q of sparseout and Bridgeout")
  ap.add_argument(
    "--methods", default="backprop,dropout,sparseout,bridgeout", help="comma list, backprop first"
  )
  ap.add_argument(
    "--data_dir", default=os.path.join(input_pipeline.REPO_ROOT.parent, "shared", "data", "mnist")
  )
  ap.add_argument(
    "--out",
    default=None,
    help="results file stem (default benchmarks/results/autoencoder_cost_<platform>)",
  )
  args = ap.parse_args()

  if os.path.isdir(args.data_dir):
    images = input_pipeline.load_mnist("idx", args.data_dir)["train"]
    source = f"full MNIST train ({len(images)})"
  else:
    images = input_pipeline.load_mnist("shipped")["train"]
    source = f"shipped t10k split ({len(images)})"
  steps_per_epoch = data.steps_per_epoch(len(images), args.batch)
  batches = [
    parallel.put_batch(b, MESH) for b in data.iterate_epoch({"x": images}, args.batch, 0, 0)
  ]
  key = parallel.replicate_key(jax.random.key(0), MESH)
  meta = report.metadata(args, source=source, steps_per_epoch=steps_per_epoch)
  print(f"{meta['cpu']}; load average at start: {meta['load_average']}; {source}")

  methods = tuple(m for m in METHODS if m[0] in args.methods.split(","))
  if not methods or methods[0][0] != "backprop":
    raise SystemExit("--methods must include backprop (the baseline of the ratios)")
  results = {}
  for hidden in args.hidden:
    timed = _time_methods(hidden, methods, args, batches, key)
    times = {n: t["wall"] for n, t in timed.items()}
    cpu = {n: t["cpu"] for n, t in timed.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    results[hidden] = {
      k: {
        "ms_per_step": med[k] * 1e3,
        "s_per_epoch": med[k] * steps_per_epoch,
        "ratio_to_backprop": med[k] / med["backprop"],
        "cpu_ms_per_step": cmed[k] * 1e3,
        "cpu_ratio_to_backprop": cmed[k] / cmed["backprop"],
        "all_ms_per_step": [t * 1e3 for t in times[k]],
        "all_cpu_ms_per_step": [t * 1e3 for t in cpu[k]],
      }
      for k in med
    }
    if "sparseout" in med and "dropout" in med:
      results[hidden]["sparseout_over_dropout"] = med["sparseout"] / med["dropout"]
      results[hidden]["sparseout_over_dropout_cpu"] = cmed["sparseout"] / cmed["dropout"]
      # the median of per-round ratios with its 95 % bootstrap CI, wall and CPU
      results[hidden]["sparseout_over_dropout_paired"] = _timing.paired_ratio(
        timed, "sparseout", "dropout"
      )

  names = [n for n, _ in methods]
  lines = [
    f"{source}; batch {args.batch}; rate {args.rate}; q {args.q} (sparseout, Bridgeout per-example"
    f" masks); median over {args.rounds} alternating rounds of {args.steps}-step windows (Bridgeout"
    f" {max(2, args.steps // 8)}); s/epoch = median wall s/step x {steps_per_epoch} steps; process"
    f" CPU time = all threads of this process. Load average at the end: {os.getloadavg()[0]:.1f}.",
    "",
    "| H | | " + " | ".join(n.capitalize() for n in names) + " | Sparseout / Dropout |",
    "|---|---|" + "---|" * (len(names) + 1),
  ]
  for hidden, res in results.items():
    so = res.get("sparseout_over_dropout", float("nan"))
    so_cpu = res.get("sparseout_over_dropout_cpu", float("nan"))
    row = " | ".join(f"{res[n]['s_per_epoch']:.2f}" for n in names)
    lines.append(f"| {hidden} | s/epoch (wall) | {row} | {so:.3f} |")
    row = " | ".join(f"{res[n]['ratio_to_backprop']:.3f}" for n in names)
    lines.append(f"| {hidden} | ratio to backprop (wall) | {row} | |")
    row = " | ".join(f"{res[n]['cpu_ratio_to_backprop']:.3f}" for n in names)
    lines.append(f"| {hidden} | ratio to backprop (process CPU time) | {row} | {so_cpu:.3f} |")
    if "sparseout_over_dropout_paired" in res:
      pr = res["sparseout_over_dropout_paired"]
      pw, pc = pr["wall"], pr["cpu"]
      lines.append(
        f"| {hidden} | Sparseout / Dropout, paired rounds [95 % CI] | wall {report.ratio_cell(pw)} "
        f"| process CPU {report.ratio_cell(pc)} |" + " |" * (len(names) - 1)
      )
    if hidden in PAPER:
      p = dict(zip([n for n, _ in METHODS], PAPER[hidden], strict=True))
      row = " | ".join(f"{p[n]}" for n in names)
      lines.append(
        f"| {hidden} | paper (GTX 1080, s) | {row} | {p['sparseout'] / p['dropout']:.3f} |"
      )
  out_dir, stem = os.path.split(
    args.out or os.path.join(RESULTS, f"autoencoder_cost_{meta['platform']}")
  )
  results = {str(k): v for k, v in results.items()}
  path = report.write(out_dir, stem, meta, results, "\n".join(lines), __doc__)
  print(open(path).read())


if __name__ == "__main__":
  np.set_printoptions(precision=4)
  main()
