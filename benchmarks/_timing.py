"""Timing shared by every benchmark: alternating rounds, paired ratios and their bootstrap intervals.

A benchmark hands in one runner per variant, ``run(n)``, that does ``n`` units of work (calls, steps)
and returns once they are finished (``block_until_ready``). Every round runs every variant once, in an
order that rotates from round to round, so a slow spell of a shared machine hits all variants alike;
the ratio of two variants is then taken round by round (paired) and summarised by its median and a
percentile-bootstrap interval of that median.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence

import jax

Runner = Callable[[int], object]


def repeat(fn: Callable[[], object]) -> Runner:
  """``run(n)``: call ``fn`` (which must block until its result is ready) ``n`` times."""

  def run(n: int) -> None:
    for _ in range(n):
      fn()

  return run


def calibrate(run: Runner, target_s: float = 0.15, max_n: int = 1 << 16) -> int:
  """How many units of an already warm ``run`` take about ``target_s`` seconds of wall time."""
  n = 1
  while True:
    t0 = time.perf_counter()
    run(n)
    elapsed = time.perf_counter() - t0
    if elapsed >= target_s / 4 or n >= max_n:
      return max(1, min(max_n, int(n * target_s / max(elapsed, 1e-9))))
    n *= 4


def alternating_rounds(
  runners: dict[str, Runner],
  rounds: int,
  units: int | dict[str, int] = 1,
  progress: Callable[[int, dict[str, dict[str, list[float]]]], None] | None = None,
) -> dict[str, dict[str, list[float]]]:
  """Per-unit wall and process-CPU seconds of each variant, one sample per round.

  Round r runs the variants in the order rotated by r, each ``units`` (or ``units[name]``) times.
  Process CPU time counts every thread of this process, and is the steadier figure on a machine
  shared with other jobs (they take cores away, but add nothing to it).

  Args:
    runners: name -> ``run(n)``, already compiled and warm.
    rounds: number of rounds (samples per variant).
    units: units per sample, one number for all or one per variant.
    progress: called after each round with (round index, samples so far).

  Returns:
    name -> {"wall": [s per unit, one per round], "cpu": [...]}.
  """
  names = list(runners)
  per = units if isinstance(units, dict) else dict.fromkeys(names, units)
  out = {n: {"wall": [], "cpu": []} for n in names}
  for r in range(rounds):
    k = r % len(names)
    for name in names[k:] + names[:k]:
      t0, c0 = time.perf_counter(), time.process_time()
      runners[name](per[name])
      out[name]["wall"].append((time.perf_counter() - t0) / per[name])
      out[name]["cpu"].append((time.process_time() - c0) / per[name])
    if progress is not None:
      progress(r, out)
  return out


def bootstrap_median_ci(
  values: Sequence[float], n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
  """Percentile-bootstrap interval of the median of ``values`` (deterministic: fixed seed).

  Resamples ``values`` with replacement ``n`` times and returns the (1 - level) / 2 and
  (1 + level) / 2 quantiles of the resampled medians.

  Example: ``bootstrap_median_ci([1.0, 1.02, 0.99, 1.01])`` -> about ``(0.99, 1.02)``.
  """
  rng = random.Random(seed)
  meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
  lo = int((1 - level) / 2 * n)
  return meds[lo], meds[min(n - 1, n - 1 - lo)]


def paired_ratio(samples: dict[str, dict[str, list[float]]], name: str, ref: str) -> dict:
  """Ratio ``name / ref`` per round, for wall and CPU time: median, 95 % bootstrap CI, all rounds.

  Returns:
    {"wall": {"median", "ci", "rounds"}, "cpu": {...}}.
  """
  out = {}
  for clock in ("wall", "cpu"):
    per_round = [
      a / b for a, b in zip(samples[name][clock], samples[ref][clock], strict=True) if b > 0
    ]
    out[clock] = {
      "median": statistics.median(per_round) if per_round else float("nan"),
      "ci": bootstrap_median_ci(per_round) if per_round else (float("nan"), float("nan")),
      "rounds": per_round,
    }
  return out


def medians(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
  """name -> {"wall": median s per unit, "cpu": median CPU s per unit}."""
  return {n: {c: statistics.median(v) for c, v in s.items() if v} for n, s in samples.items()}


def jitted_vjp(layer: Callable) -> Callable:
  """jit of f(key, x, w) = (layer(key, x), w^T d layer / dx): one forward + backward to time."""

  def f(key, x, w):
    y, pull = jax.vjp(lambda x: layer(key, x), x)
    return y, pull(w)[0]

  return jax.jit(f)
