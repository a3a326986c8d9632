"""WRN training-step time: Sparseout against Flax Dropout (and no noise), measured in one process.

For each model (default WRN-28-10 and WRN-16-4) it builds the training program's own step, jitted over the
device mesh (``train.wrn.train.make_steps``: forward, backward, SGD nesterov update, BN statistics) for each
regulariser, compiles them all, then times ``--steps`` steps per variant in ``--rounds`` rounds, the
variant order rotating every round so a background load hits all alike. Reported: the median seconds per step
and images/s of each variant, and the sparseout/dropout ratio as the median of the per-round ratios (each round
times both within seconds of each other) together with the ratio of medians. Inputs are synthetic CIFAR-shaped
batches (the step time does not depend on pixel values). XLA's cost analysis gives the FLOPs of one step;
with ``--peak_tflops`` the model FLOP utilisation is reported.

    python -m benchmarks.wrn_step_time                                  # CPU: batch 8, WRN-28-10 and WRN-16-4
    python -m benchmarks.wrn_step_time --models 28-10 --batch 128 --dtype bfloat16 --peak_tflops 989   # a GPU

Writes ``benchmarks/results/wrn_step_time_<platform>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from benchmarks import _timing, report
from train.common import parallel
from train.wrn import augment, input_pipeline, train
from train.wrn.configs import wrn28_10_cifar10

VARIANTS = {
  "dropout": {"regularizer": "dropout"},
  "sparseout_q2.5": {"regularizer": "sparseout", "q": 2.5},
  "sparseout_q1.5": {"regularizer": "sparseout", "q": 1.5},
  "none": {"regularizer": "none"},
  # The block's noise and second conv recomputed in the backward (``--config.remat_noise=True``).
  "sparseout_q1.5_remat": {"regularizer": "sparseout", "q": 1.5, "remat_noise": True},
  "dropout_remat": {"regularizer": "dropout", "remat_noise": True},
}


def build(
  depth: int, width: int, batch: int, dtype: str, overrides: dict, cost_analysis: bool = False
) -> dict:
  """Compile one variant's train step and return a closure running it (state threaded through)."""
  c = wrn28_10_cifar10.get_config()
  c.depth, c.width, c.batch_size, c.dtype = depth, width, batch, dtype
  for k, v in overrides.items():
    c[k] = v
  mesh = parallel.make_mesh()
  graphdef, state, tx = train.init_state(c, 10, 390, mesh)
  train_step, _ = train.make_steps(graphdef, tx, False, state)
  ds = input_pipeline.synthetic(batch, 10, seed=0)
  host_batch = next(augment.raw_train_batches(ds, global_batch=batch, seed=0, epoch=0))
  sharded = parallel.put_batch(host_batch, mesh)
  key = parallel.replicate_key(jax.random.key(0), mesh)
  box = {"state": state}
  flops = float("nan")
  if cost_analysis:  # a second compilation (the AOT path does not share jit's cache), so opt-in
    try:
      cost = train_step.lower(box["state"], sharded, key).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      flops = float(cost.get("flops", float("nan")))
    except Exception:  # cost analysis is best effort and backend dependent
      pass

  def run(n: int) -> None:
    """n steps, finished."""
    for _ in range(n):
      box["state"], m = train_step(box["state"], sharded, key)
    jax.block_until_ready((box["state"], m))

  run(1)  # the jit-level compile and first-run allocation
  return {"run": run, "flops": flops}


def measure(args: argparse.Namespace, depth: int, width: int) -> dict:
  """Time every variant of WRN-depth-width; returns per-variant medians and the paired ratios."""
  names = [v for v in args.variants.split(",") if v]
  t0 = time.perf_counter()
  runners = {
    n: build(depth, width, args.batch, args.dtype, VARIANTS[n], args.cost_analysis) for n in names
  }
  compile_s = time.perf_counter() - t0
  timed = _timing.alternating_rounds({n: runners[n]["run"] for n in names}, args.rounds, args.steps)
  samples = {n: t["wall"] for n, t in timed.items()}
  cpu = {n: t["cpu"] for n, t in timed.items()}
  med = {n: statistics.median(v) for n, v in samples.items()}
  med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
  out = {
    "model": f"WRN-{depth}-{width}",
    "batch": args.batch,
    "dtype": args.dtype,
    "rounds": args.rounds,
    "steps_per_round": args.steps,
    "compile_and_warmup_s_all_variants": compile_s,
    "median_step_s": med,
    "images_per_s": {n: args.batch / s for n, s in med.items()},
    "samples_step_s": samples,
    # Process CPU time (all threads) per step: less sensitive than wall time to other processes on a
    # shared machine, which take cores away but do not add to this process's CPU time.
    "median_cpu_s_per_step": med_cpu,
    "samples_cpu_s": cpu,
    "flops_per_step": {n: runners[n]["flops"] for n in names},
  }
  if args.peak_tflops:
    out["mfu"] = {
      n: runners[n]["flops"] / med[n] / (args.peak_tflops * 1e12 * jax.local_device_count())
      for n in names
    }
  if "dropout" in names:
    for n in names:
      if n != "dropout":
        per_round = [a / b for a, b in zip(samples[n], samples["dropout"], strict=True)]
        per_round_cpu = [a / b for a, b in zip(cpu[n], cpu["dropout"], strict=True)]
        out[f"ratio_{n}_over_dropout"] = {
          "median_of_round_ratios": statistics.median(per_round),
          "ratio_of_medians": med[n] / med["dropout"],
          "round_ratios": per_round,
          "cpu_time_median_of_round_ratios": statistics.median(per_round_cpu),
          "cpu_time_ratio_of_medians": med_cpu[n] / med_cpu["dropout"],
        }
  return out


def to_markdown(results: list[dict]) -> str:
  """A results table: median step time, images/s and the sparseout/dropout ratios per model."""
  lines = [
    "Synthetic CIFAR-shaped batches.",
    "Ratios are medians of per-round ratios (variants alternate within each round); the machine was shared.",
    "CIs: 95 % percentile bootstrap of that median over rounds (2000 resamples, seed 0).",
    "",
    "| model | batch | dtype | variant | median s/step (wall) | images/s | / dropout, wall (median of rounds) | / dropout, wall (ratio of medians) | / dropout, process CPU time (median of rounds) | round ratios min-max (wall) | 95% CI wall | 95% CI CPU time |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    for n, s in r["median_step_s"].items():
      ratio = r.get(f"ratio_{n}_over_dropout")
      a = f"{ratio['median_of_round_ratios']:.3f}" if ratio else "1"
      b = f"{ratio['ratio_of_medians']:.3f}" if ratio else "1"
      c = f"{ratio['cpu_time_median_of_round_ratios']:.3f}" if ratio else "1"
      spread = f"{min(ratio['round_ratios']):.2f}-{max(ratio['round_ratios']):.2f}" if ratio else ""
      ci_wall = ci_cpu = ""
      if ratio:
        lo, hi = _timing.bootstrap_median_ci(ratio["round_ratios"])
        ci_wall = f"{lo:.3f}-{hi:.3f}"
        cpu = [
          x / y for x, y in zip(r["samples_cpu_s"][n], r["samples_cpu_s"]["dropout"], strict=True)
        ]
        lo, hi = _timing.bootstrap_median_ci(cpu)
        ci_cpu = f"{lo:.3f}-{hi:.3f}"
      lines.append(
        f"| {r['model']} | {r['batch']} | {r['dtype']} | {n} | {s:.4f} | {r['images_per_s'][n]:.3g} "
        f"| {a} | {b} | {c} | {spread} | {ci_wall} | {ci_cpu} |"
      )
  return "\n".join(lines) + "\n"


def main() -> None:
  """Parse flags, measure, write the results files."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="28-10,16-4", help="comma list of depth-width")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--dtype", default="float32", choices=(*train.DTYPES, "auto"))
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--steps", type=int, default=2, help="steps per variant per round")
  p.add_argument("--variants", default="dropout,sparseout_q2.5,sparseout_q1.5,none")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="per-device peak, for MFU")
  p.add_argument("--cost_analysis", action="store_true", help="XLA FLOPs per step (compiles twice)")
  p.add_argument("--out", default="benchmarks/results")
  p.add_argument("--suffix", default="", help="appended to the results file name")
  args = p.parse_args()
  if args.peak_tflops:
    args.cost_analysis = True
  for v in args.variants.split(","):
    if v not in VARIANTS:
      p.error(f"--variants: unknown {v!r}; choose from {tuple(VARIANTS)}")
  results = []
  for m in args.models.split(","):
    depth, width = (int(x) for x in m.split("-"))
    res = measure(args, depth, width)
    print(
      json.dumps({k: v for k, v in res.items() if not k.startswith("samples")}, indent=1),
      flush=True,
    )
    results.append(res)
  stem = f"wrn_step_time_{jax.devices()[0].platform}{args.suffix}"
  title = "WRN training-step time"
  path = report.write(args.out, stem, report.metadata(args), results, to_markdown(results), title)
  print(f"wrote {path} and its .json")


if __name__ == "__main__":
  main()
