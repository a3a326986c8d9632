"""Overlay the test-error curves of several WRN runs (e.g. dropout against Sparseout at several q).

    python -m train.wrn.plot_runs --out runs/wrn_c10.png runs/wrn_c10_dropout runs/wrn_c10_q2.5 runs/wrn_c10_q3

Each argument is a workdir of ``train.wrn.main``; the label is its config's regulariser (and q).
"""

from __future__ import annotations

import argparse
import json
import os

from train.common import labels, metrics, plots
from train.wrn.train import REFERENCE_ERROR


def label_of(workdir: str) -> str:
  """'dropout p=0.3' / 'sparseout q=2.5 p=0.3' from the run's config.json (the folder name if absent)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return os.path.basename(os.path.normpath(workdir))
  with open(path) as f:
    c = json.load(f)
  return labels.regularizer_label(c["regularizer"], c["q"], c["rate"])


def main() -> None:
  """Read every workdir's metrics.jsonl and save one PNG of test error (%) per epoch."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--out", required=True, help="output PNG")
  p.add_argument(
    "--reference",
    choices=tuple(REFERENCE_ERROR),
    default=None,
    help="draw that dataset's reference error",
  )
  args = p.parse_args()
  series = {}
  for w in args.workdirs:
    path = os.path.join(w, "metrics.jsonl")
    if not os.path.isfile(path):
      p.error(f"{path} does not exist (is {w!r} a train.wrn.main workdir?)")
    rows = [r for r in metrics.read_jsonl(path) if "eval/error" in r]
    series[label_of(w)] = ([r["epoch"] for r in rows], [r["eval/error"] for r in rows])
  if args.reference:
    xs = [x for s in series.values() for x in s[0]]
    series[f"reference {REFERENCE_ERROR[args.reference]}%"] = (
      [min(xs), max(xs)],
      [REFERENCE_ERROR[args.reference]] * 2,
    )
  print(
    plots.line_plot(series, args.out, xlabel="epoch", ylabel="test error (%)", title="WRN on CIFAR")
  )


if __name__ == "__main__":
  main()
