"""Figure 1: train backprop, dropout and sparseout(q) autoencoders and compare test Hoyer sparsity.

``python -m train.autoencoder.sweep --workdir runs/figure1`` (shipped MNIST, a few minutes on 2 CPU
cores). Full MNIST: add ``--config.data_source=idx --config.data_dir=../shared/data/mnist``. Writes
``figure1.png`` (test Hoyer sparsity and test loss per epoch, one line per run), ``figure1.csv`` (every
point), ``figure1.json`` (config, histories, verdict) and prints a table ending in a one-line verdict
on whether the paper's ordering held: sparsity falls as q rises, q = 2 equal to dropout.
Each run lives in ``<workdir>/<run>/`` and resumes from its checkpoint if the sweep is run again.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import ml_collections

from train.common import cli, study

EQUAL_TOL = 1e-6


def parse_run(spec: str) -> tuple[str, str, float]:
  """Parse a run spec (``backprop``, ``dropout``, ``q=1.5``, ``bridgeout=1.5``) into (name, regularizer, q).

  Raises:
    ValueError: an unknown spec.
  """
  spec = spec.strip()
  if spec == "backprop":
    return "backprop", "none", 2.0
  if spec == "dropout":
    return "dropout", "dropout", 2.0
  for prefix, reg in (("q=", "sparseout"), ("bridgeout=", "bridgeout")):
    if spec.startswith(prefix):
      q = float(spec[len(prefix) :])
      name = f"sparseout_q{q:g}" if reg == "sparseout" else f"bridgeout_q{q:g}"
      return name, reg, q
  raise ValueError(
    f"sweep run {spec!r}: expected backprop, dropout, q=<float> or bridgeout=<float>"
  )


def run_config(
  base: ml_collections.ConfigDict, regularizer: str, q: float
) -> ml_collections.ConfigDict:
  """A copy of ``base`` with the run's regulariser and q."""
  cfg = ml_collections.ConfigDict(base.to_dict())
  cfg.regularizer, cfg.q = regularizer, q
  return cfg


def verdict(results: dict[str, dict[str, Any]]) -> tuple[bool, str]:
  """Did the paper's ordering hold? Sparseout's final test Hoyer strictly falls as q rises, q=2 == dropout.

  Args:
    results: run name -> {"regularizer", "q", "history"}.

  Returns:
    ``(held, one_line_explanation)``.
  """
  so = sorted(
    (
      (r["q"], r["history"][-1]["eval/hoyer"])
      for r in results.values()
      if r["regularizer"] == "sparseout"
    ),
  )
  if len(so) < 2:
    return False, "ORDERING NOT TESTED: fewer than two sparseout runs"
  broken = [
    f"q={a:g} ({ha:.4f}) <= q={b:g} ({hb:.4f})"
    for (a, ha), (b, hb) in zip(so, so[1:], strict=False)
    if ha <= hb
  ]
  parts, held = [], not broken
  chain = ", ".join(f"q={q:g}: {h:.3f}" for q, h in so)
  parts.append(f"final test Hoyer {chain}")
  if broken:
    parts.append("not monotone at " + "; ".join(broken))
  q2 = [h for q, h in so if q == 2.0]
  if q2 and "dropout" in results:
    diff = abs(q2[0] - results["dropout"]["history"][-1]["eval/hoyer"])
    same = diff <= EQUAL_TOL
    held = held and same
    parts.append(f"q=2 vs dropout |diff|={diff:.1e} ({'equal' if same else 'DIFFERENT'})")
  head = "ORDERING HELD" if held else "ORDERING DID NOT HOLD"
  return held, f"{head}: " + "; ".join(parts)


def write_outputs(
  workdir: str, base: ml_collections.ConfigDict, results: dict[str, dict[str, Any]]
) -> dict[str, str]:
  """Write figure1.png/.csv/.json; return {kind: absolute path}."""
  from train.common import plots

  os.makedirs(workdir, exist_ok=True)
  hoyer, loss = {}, {}
  for name, r in results.items():
    h = r["history"]
    ep = [row["epoch"] for row in h]
    hoyer[f"{name} (loss {h[-1]['eval/loss']:.4f})"] = (ep, [row["eval/hoyer"] for row in h])
    loss[name] = (ep[1:], [row["eval/loss"] for row in h[1:]])
  src = (
    "shipped t10k split" if base.data_source == "shipped" else f"{base.data_source} {base.data_dir}"
  )
  title = (
    f"H={base.hidden}, rate={base.rate}, sparseout gradient={base.gradient}, {base.optimizer} "
    f"lr={base.learning_rate} wd={base.weight_decay}, batch {base.batch_size}, {src}"
  )
  png = plots.save_panels(
    [
      plots.Panel(
        hoyer, "epoch", "test Hoyer sparsity of hidden activations", "Sparsity (Figure 1)"
      ),
      plots.Panel(
        loss, "epoch", f"test reconstruction loss ({base.loss})", "Reconstruction loss", logy=True
      ),
    ],
    os.path.join(workdir, "figure1.png"),
    suptitle=title,
  )
  csv_path = os.path.abspath(os.path.join(workdir, "figure1.csv"))
  keys = sorted({k for r in results.values() for row in r["history"] for k in row})
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["run", "regularizer", "q", *keys])
    for name, r in results.items():
      for row in r["history"]:
        w.writerow([name, r["regularizer"], r["q"], *[row.get(k, "") for k in keys]])
  held, line = verdict(results)
  json_path = os.path.abspath(os.path.join(workdir, "figure1.json"))
  with open(json_path, "w") as f:
    json.dump(
      {"config": base.to_dict(), "runs": results, "ordering_held": held, "verdict": line},
      f,
      indent=1,
    )
  return {"plot": png, "csv": csv_path, "json": json_path}


def format_table(results: dict[str, dict[str, Any]]) -> str:
  """The final-epoch table: one row per run, then the verdict line."""
  head = f"{'run':<18}{'q':>6}{'test Hoyer':>12}{'test loss':>11}{'train loss':>12}{'zeros':>8}{'dead':>7}{'mean h>0':>10}"
  lines = [head, "-" * len(head)]
  for name, r in results.items():
    f = r["history"][-1]
    q = f"{r['q']:g}" if r["regularizer"] in ("sparseout", "bridgeout") else "-"
    lines.append(
      f"{name:<18}{q:>6}{f['eval/hoyer']:>12.4f}{f['eval/loss']:>11.5f}{f['eval/train_loss']:>12.5f}"
      f"{f['eval/zero_fraction']:>8.3f}{f['eval/dead_units']:>7.3f}{f['eval/mean_active']:>10.3f}"
    )
  lines.append(verdict(results)[1])
  return "\n".join(lines)


def run_sweep(base: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train every run of ``base.sweep_runs`` on the same data, write the outputs, return the results.

  Returns:
    ``{"results": {name: {...}}, "paths": {...}, "ordering_held": bool, "table": str}``.
  """
  from train.autoencoder import input_pipeline, train

  specs = [parse_run(s) for s in str(base.sweep_runs).split(",") if s.strip()]
  datasets = input_pipeline.load_mnist(base.data_source, base.data_dir or None)
  print(
    f"Figure 1 sweep: {len(specs)} runs x {base.num_epochs} epochs, {len(datasets['train'])} train / "
    f"{len(datasets['test'])} test images, H={base.hidden}, output in {os.path.abspath(workdir)}",
    flush=True,
  )
  results: dict[str, dict[str, Any]] = {}
  for i, (name, reg, q) in enumerate(specs, 1):
    print(f"[{i}/{len(specs)}] {name}", flush=True)
    out = train.train_and_evaluate(
      run_config(base, reg, q), os.path.join(workdir, name), datasets=datasets
    )
    results[name] = {"regularizer": reg, "q": q, "history": out["history"]}
    study.release_compiled()
  paths = write_outputs(workdir, base, results)
  held, _ = verdict(results)
  return {"results": results, "paths": paths, "ordering_held": held, "table": format_table(results)}


def report(out: dict[str, Any]) -> None:
  """Print the table and where the outputs went."""
  print()
  print(out["table"])
  print()
  for kind, path in out["paths"].items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  cli.define_flags("train/autoencoder/configs/figure1.py", default_workdir="runs/figure1")
  cli.run("train.autoencoder.sweep", entry="run_sweep", report=report)
