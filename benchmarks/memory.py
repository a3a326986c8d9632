"""Compiled memory of the WRN-28-10 and AWD-LSTM train steps: Sparseout against dropout and no noise.

For each model, compute dtype and noise it lowers the single-device train step of ``benchmarks._steps``
on abstract arguments (nothing is allocated), compiles it, and reads XLA's
``compiled.memory_analysis()``: temp bytes (activations kept for the backward pass and scratch) and
argument bytes (parameters, optimizer state, batch). The extra temp bytes of Sparseout over dropout,
divided by the number of noised elements of one step, is the price of the noise per activation.

  python -m benchmarks.memory                      # WRN-28-10 at batch 128, AWD-LSTM at 20 x 70
  python -m benchmarks.memory --models lstm --dtypes float32
  python -m benchmarks.memory --noises none,dropout,sparseout,sparseout_keep,sparseout_policy,sparseout_remat

Noises: "sparseout" is the WRN's default for the platform, "sparseout_keep" keeps Sparseout's
output (``remat_output=False``), "sparseout_policy" recomputes it from input and mask
(``remat_output=True``, ``sparseout_jax.remat_policy``), "sparseout_remat" recomputes the noise
and mask too (``remat_noise=True``); a model skips the noises it does not have.

Writes ``benchmarks/results/memory_<platform>.{md,json}``.
"""

from __future__ import annotations

import argparse
import time

import jax

from benchmarks import _steps, report

MODELS = {
  "wrn": (
    "WRN-28-10, batch 128",
    lambda noise, dtype: _steps.wrn_program(noise, dtype),
    (*_steps.WRN_NOISES, "sparseout_policy"),
  ),
  "lstm": (
    "AWD-LSTM (PTB), batch 20 x bptt 70",
    lambda noise, dtype: _steps.lstm_program(noise, dtype),
    _steps.NOISES,
  ),
}


def measure(program: _steps.StepProgram) -> tuple[dict, object]:
  """(memory stats + noised-element count, compiled step) of one program."""
  compiled = program.step.lower(*program.abstract_args).compile()
  return {**_steps.memory_stats(compiled), "noised": program.noised}, compiled


def extra_bytes(rows: dict[str, dict]) -> dict[str, float]:
  """Extra temp bytes per noised element: sparseout over dropout, and each noise over no noise.

  Args:
    rows: noise name -> memory stats (as ``measure`` returns) for one model and dtype.

  Returns:
    {"sparseout_vs_dropout": b, "sparseout_vs_none": b, "dropout_vs_none": b} (and the same for
    every other "sparseout*" row, e.g. "sparseout_remat"), bytes per noised element, for the pairs
    present.
  """
  out = {}
  pairs = [(a, b) for a in rows if a.startswith("sparseout") for b in ("dropout", "none")]
  for a, b in [*pairs, ("dropout", "none")]:
    if a in rows and b in rows and rows[a]["noised"]:
      out[f"{a}_vs_{b}"] = (rows[a]["temp"] - rows[b]["temp"]) / rows[a]["noised"]
  return out


TITLE = "Train-step memory: Sparseout, dropout, no noise"


def to_markdown(table: dict) -> str:
  """One row per (model, dtype, noise): temp and argument MiB, and the extra bytes per noised element.

  The body of a results file (:func:`benchmarks.report.header` is its head).

  Args:
    table: {model label: {dtype: {noise: stats}}}.
  """
  mib = 1 << 20
  lines = [
    "Bytes from XLA's `compiled.memory_analysis()` of one train step (forward, backward, update; the"
    " state donated). Noised elements: the elements of every tensor a noise layer acts on in one step."
    " Extra B/elem: the temp-bytes difference divided by them.",
    "",
  ]
  rows = []
  for model, by_dtype in table.items():
    for dtype, by_noise in by_dtype.items():
      extra = extra_bytes(by_noise)
      for noise, r in by_noise.items():
        vs_drop = extra.get(f"{noise}_vs_dropout")
        vs_none = extra.get(f"{noise}_vs_none")
        rows.append(
          (
            model,
            dtype,
            noise,
            f"{r['temp'] / mib:.1f}",
            f"{r['argument'] / mib:.1f}",
            f"{r['noised']:,}",
            "" if vs_drop is None else f"{vs_drop:.3f}",
            "" if vs_none is None else f"{vs_none:.3f}",
          )
        )
  header = (
    "model",
    "dtype",
    "noise",
    "temp MiB",
    "argument MiB",
    "noised elements",
    "extra B/elem vs dropout",
    "extra B/elem vs no noise",
  )
  return "\n".join(lines) + "\n" + report.table(header, rows) + "\n"


def main() -> None:
  """Parse flags, compile every variant, write the results files."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", default="wrn,lstm")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--noises", default="none,dropout,sparseout")
  ap.add_argument("--out", default="benchmarks/results")
  a = ap.parse_args()
  for m in a.models.split(","):
    if m not in MODELS:
      ap.error(f"--models: unknown {m!r}; choose from {tuple(MODELS)}")
  table: dict = {}
  for m in a.models.split(","):
    label, make, known = MODELS[m]
    for dtype in a.dtypes.split(","):
      for noise in [n for n in a.noises.split(",") if n in known]:
        t0 = time.perf_counter()
        stats, _ = measure(make(noise, dtype))
        table.setdefault(label, {}).setdefault(dtype, {})[noise] = stats
        print(f"{label} {dtype} {noise}: {stats} ({time.perf_counter() - t0:.0f} s)", flush=True)
  extra = {m: {d: extra_bytes(rows) for d, rows in by.items()} for m, by in table.items()}
  results = {"table": table, "extra_bytes_per_noised": extra}
  stem = f"memory_{jax.devices()[0].platform}"
  path = report.write(a.out, stem, report.metadata(a), results, to_markdown(table), TITLE)
  print(open(path).read())


if __name__ == "__main__":
  main()
