"""Cost of verifying the standard data files on every load (size, then sha256; train.common.datafiles).

Per dataset: the bytes hashed and the wall time of :func:`train.common.datafiles.verify_file` over
its files (median of ``--repeats``, the files in the page cache, as on a second run), beside the
time the program's reader takes to load that dataset, for scale. CIFAR is not on this machine: a
file of random bytes of each archive's published size stands in (hashing depends on the size only);
the WRN program reads the archive once per split, so a run verifies it twice.

  python -m benchmarks.verify_data --data ../shared/data   # writes benchmarks/results/verify_data_cpu.{md,json}
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from benchmarks import report
from train.autoencoder import input_pipeline as ae_ip
from train.common import datafiles
from train.lm import input_pipeline as lm_ip
from train.wrn import input_pipeline as wrn_ip


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def datasets(data: str) -> dict[str, list[tuple[str, datafiles.KnownFile]]]:
  """name -> [(path, known)] of the standard files under ``data`` (and the shipped MNIST)."""
  out = {}
  for name, folder in (("PTB", "ptb"), ("WikiText-2", "wikitext-2")):
    spec = lm_ip.DATASETS["ptb" if name == "PTB" else "wt2"]
    out[name] = [
      (os.path.join(data, folder, f), datafiles.KnownFile(size, sha))
      for f, size, sha in zip(spec.files, spec.sizes, spec.sha256, strict=True)
    ]
  out["MNIST (4 IDX files)"] = [
    (os.path.join(data, "mnist", f), k) for f, k in datafiles.MNIST.items()
  ]
  out["MNIST shipped (data/mnist)"] = [
    (str(ae_ip.SHIPPED_DIR / f), datafiles.MNIST[f])
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
  ]
  return out


def loaders(data: str) -> dict:
  """name -> the program's read of that dataset (verification included)."""
  return {
    "PTB": lambda: lm_ip.load_corpus("ptb", os.path.join(data, "ptb")),
    "WikiText-2": lambda: lm_ip.load_corpus("wt2", os.path.join(data, "wikitext-2")),
    "MNIST (4 IDX files)": lambda: ae_ip.load_mnist("idx", os.path.join(data, "mnist")),
    "MNIST shipped (data/mnist)": lambda: ae_ip.load_mnist("shipped"),
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", default="../shared/data", help="folder with ptb/, wikitext-2/, mnist/")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default="benchmarks/results/verify_data_cpu")
  args = ap.parse_args()
  meta = report.metadata(
    args
  )  # the load at the start: on a shared machine other work slows hashing
  rows = []
  load = loaders(args.data)
  for name, files in datasets(args.data).items():

    def verify(files=files) -> None:
      for path, known in files:
        datafiles.verify_file(path, known, verify=True)

    verify()  # warm the page cache
    rows.append(
      {
        "dataset": name,
        "bytes": sum(k.size for _, k in files),
        "verify_s": _median_seconds(verify, args.repeats),
        "load_s": _median_seconds(load[name], max(1, args.repeats // 2)),
      }
    )
  with tempfile.TemporaryDirectory() as tmp:
    for name in ("cifar10", "cifar100"):
      known = wrn_ip._BINARY[name]["known"]
      path = os.path.join(tmp, wrn_ip._BINARY[name]["archive"])
      with open(path, "wb") as f:
        for _ in range(known.size // (1 << 24)):
          f.write(os.urandom(1 << 24))
        f.write(os.urandom(known.size % (1 << 24)))

      def hash_it(path=path) -> None:
        datafiles.sha256_of(path)

      hash_it()
      rows.append(
        {
          "dataset": f"{name} archive (same-size stand-in)",
          "bytes": known.size,
          "verify_s": _median_seconds(hash_it, args.repeats),
          "load_s": None,
        }
      )
  table = [
    (
      r["dataset"],
      f"{r['bytes'] / 1e6:.1f}",
      f"{r['verify_s']:.3f}",
      "" if r["load_s"] is None else f"{r['load_s']:.3f}",
      f"{r['bytes'] / 1e6 / r['verify_s']:.0f}",
    )
    for r in rows
  ]
  markdown = (
    "Median wall time, files in the page cache; the load average is the one at the start.\n\n"
    + report.table(("dataset", "MB hashed", "verify (s)", "whole load (s)", "MB/s"), table)
  )
  out_dir, stem = os.path.split(args.out)
  title = "Verifying the data on every load: cost"
  print(open(report.write(out_dir, stem, meta, {"rows": rows}, markdown, title)).read())


if __name__ == "__main__":
  main()
