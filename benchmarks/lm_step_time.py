"""AWD-LSTM train-step time: Sparseout vs Flax dropout, alternating in one process.

Builds the real train step of ``train/lm`` (jitted over the device mesh) for each variant (same model size, same
real PTB windows, same keys) and times rounds of ``--steps`` steps, rotating the variant order
every round so that load changes on a shared machine hit every variant alike. Reports tokens/s
per variant and the step-time ratio to dropout (median over rounds).

  python -m benchmarks.lm_step_time --config=ptb_awd --rounds=4 --steps=3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from benchmarks import _timing, report
from train.common import parallel
from train.lm import input_pipeline as ip
from train.lm import train
from train.lm.configs import ptb_awd, ptb_small

CONFIGS = {"ptb_awd": ptb_awd, "ptb_small": ptb_small}
VARIANTS = {
  "dropout": dict(impl="dropout", q=2.0),
  "sparseout_q2": dict(impl="sparseout", q=2.0),
  "sparseout_q1.5": dict(impl="sparseout", q=1.5),
  "sparseout_q2.5": dict(impl="sparseout", q=2.5),
}


def main() -> None:
  """Parse flags, time the variants, write benchmarks/results/lm_step_time_<config>.{json,md}."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="ptb_awd", choices=sorted(CONFIGS))
  ap.add_argument("--variants", default="dropout,sparseout_q1.5,sparseout_q2.5")
  ap.add_argument("--rounds", type=int, default=4)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
  ap.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  ap.add_argument("--bptt", type=int, default=70)
  ap.add_argument("--data_dir", default="../shared/data/ptb")
  ap.add_argument("--out", default="benchmarks/results")
  a = ap.parse_args()

  names = a.variants.split(",")
  base = CONFIGS[a.config].get_config()
  if a.batch_size:
    base.batch_size = a.batch_size
  corpus = ip.load_corpus("ptb", a.data_dir)
  streams = ip.batchify(corpus.train, base.batch_size)
  windows = [ip.make_window(streams, s, a.bptt) for s in range(0, 40 * a.bptt, a.bptt)]
  mesh = parallel.make_mesh()

  runners = {}
  for name in names:
    c = base.copy_and_resolve_references()
    for k, v in VARIANTS[name].items():
      c[k] = v
    graphdef, state, tx = train.init_state(c, len(corpus.vocab), mesh)
    step = train.make_train_step(graphdef, tx, c, state)
    runners[name] = (step, [state])

  def run(name: str, i: int) -> float:
    step, st = runners[name]
    w = windows[i % len(windows)]
    batch = parallel.put_batch({"x": w.inputs, "y": w.targets}, mesh, axis=1)
    batch["length"] = parallel.put_replicated(np.int32(w.length), mesh)
    st[0], m = step(st[0], batch, parallel.replicate_key(jax.random.key(i), mesh))
    return float(m["loss"])

  t0 = time.time()
  for name in names:  # compile + one warm step each
    run(name, 0)
    run(name, 1)
  compile_s = time.time() - t0

  counter = iter(range(2, 1 << 30))

  def runner(name: str):
    return lambda n: [run(name, next(counter)) for _ in range(n)]

  def progress(r: int, s: dict) -> None:
    print(
      f"round {r + 1}/{a.rounds}: " + ", ".join(f"{n} {s[n]['wall'][-1]:.2f}s" for n in names),
      flush=True,
    )

  timed = _timing.alternating_rounds(
    {n: runner(n) for n in names}, a.rounds, a.steps, progress=progress
  )
  times = {n: t["wall"] for n, t in timed.items()}
  cpu = {n: t["cpu"] for n, t in timed.items()}

  tokens = base.batch_size * a.bptt
  ref = names[0]
  rows = {}
  for n in names:
    med = statistics.median(times[n])
    rows[n] = {
      "step_s_median": med,
      "step_s_all": times[n],
      "cpu_s_per_step_median": statistics.median(cpu[n]),
      "cpu_s_all": cpu[n],
      # CPU seconds of this process: far less sensitive than wall time to other jobs' load.
      f"cpu_ratio_vs_{ref}_median": statistics.median(cpu[n]) / statistics.median(cpu[ref]),
      "tokens_per_cpu_s": tokens / statistics.median(cpu[n]),
      "tokens_per_s": tokens / med,
      f"ratio_vs_{ref}_median": med / statistics.median(times[ref]),
      # per-round ratios (the variants of one round ran back to back), their median and 95 % CI
      f"paired_vs_{ref}": _timing.paired_ratio(timed, n, ref),
    }
  result = {
    "config": a.config,
    "batch_size": base.batch_size,
    "bptt": a.bptt,
    "model": {"emb": base.emb_size, "hidden": base.hidden_size, "layers": base.num_layers},
    "rates": {s: base[f"rate_{s}"] for s in "eihow"},
    "rounds": a.rounds,
    "steps_per_round": a.steps,
    "compile_and_warmup_s": compile_s,
    "variants": rows,
  }
  lines = [
    f"{a.config}: batch {base.batch_size}, bptt {a.bptt}. {a.rounds} rounds x {a.steps} steps, "
    "variants alternated within each round; medians.",
    "",
    "Wall time depends on the other jobs sharing the machine; the CPU seconds of this process",
    "(user + system) are the steadier measure of the work a step costs.",
    "",
    "Paired: the median over rounds of the per-round ratio, with its 95 % percentile-bootstrap CI",
    "(2000 resamples, seed 0).",
    "",
  ]
  header = (
    "variant",
    "wall s/step",
    "tokens/s (wall)",
    f"wall ratio vs {ref} (of medians)",
    "paired wall [95 % CI]",
    "CPU s/step",
    f"CPU ratio vs {ref} (of medians)",
    "paired CPU [95 % CI]",
  )
  table = [
    (
      n,
      f"{r['step_s_median']:.2f}",
      f"{r['tokens_per_s']:.0f}",
      f"{r[f'ratio_vs_{ref}_median']:.3f}",
      report.ratio_cell(r[f"paired_vs_{ref}"]["wall"]),
      f"{r['cpu_s_per_step_median']:.2f}",
      f"{r[f'cpu_ratio_vs_{ref}_median']:.3f}",
      report.ratio_cell(r[f"paired_vs_{ref}"]["cpu"]),
    )
    for n, r in rows.items()
  ]
  markdown = "\n".join(lines) + "\n" + report.table(header, table)
  path = report.write(
    a.out, f"lm_step_time_{a.config}", report.metadata(a), result, markdown, __doc__
  )
  print(open(path).read())


if __name__ == "__main__":
  main()
