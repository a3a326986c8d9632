"""The same run on 1, 2, 4 and 8 CPU devices, noise on: the largest parameter difference from 1 device.

Runs the three programs' jitted steps as `tests/test_device_count.py` does (its helpers, so the
figures are the tests' own runs): the autoencoder 5 Adam steps, WRN-10-1 (tiny) 3 SGD steps with
BatchNorm, the tiny LM 3 clipped SGD steps, Sparseout q = 1.5. "moved" is how far training moved the
parameters on 1 device; the tests' tolerances are 1e-5, 1e-5 and 5e-5.

  python -m benchmarks.device_count --out benchmarks/results   # SPARSEOUT_DATA names ptb/'s folder
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import program_steps
import test_device_count as t

from benchmarks import report

PROGRAMS = {  # name -> (run(num_devices) -> (final, initial), what "moved" leaves out)
  "autoencoder (5 Adam steps)": (lambda n: t._autoencoder(n, steps=5), None),
  "WRN-10-1 (3 SGD steps, BatchNorm)": (lambda n: t._wrn(n, steps=3), "bn"),
  "LM tiny (3 clipped SGD steps)": (lambda n: t._lm(n, steps=3), "carry"),
}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="benchmarks/results")
  args = p.parse_args()
  rows, results = [], {}
  for name, (run, skip) in PROGRAMS.items():
    finals = {}
    for n in t.COUNTS:
      finals[n], initial = run(n)
    if skip is not None:
      initial[skip] = finals[1][skip]
    diffs = {n: program_steps.max_diff(finals[n], finals[1]) for n in t.COUNTS[1:]}
    moved = program_steps.max_diff(finals[1], initial)
    results[name] = {"max_abs_diff": diffs, "moved": moved}
    rows.append([name] + [f"{diffs[n]:.1e}" for n in t.COUNTS[1:]] + [f"{moved:.1e}"])
    print(name, diffs, f"moved {moved:.3g}", flush=True)
  md = report.table(("program", "2 devices", "4 devices", "8 devices", "moved"), rows)
  path = report.write(args.out, "device_count_cpu", report.metadata(args), results, md, __doc__)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
