"""Interleaved timing: every variant is timed in each round, and medians are compared."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def calibrate(fn: Callable[[], object], target_s: float = 0.15) -> int:
  """How many calls of `fn` (already warm) take about `target_s`."""
  n, elapsed = 1, 0.0
  while True:
    t0 = time.perf_counter()
    for _ in range(n):
      fn()
    elapsed = time.perf_counter() - t0
    if elapsed >= target_s / 4 or n >= 1 << 16:
      return max(1, int(n * target_s / max(elapsed, 1e-9)))
    n *= 4


def interleaved_medians(
  fns: dict[str, Callable[[], object]], rounds: int = 7
) -> dict[str, tuple[float, float]]:
  """Median (wall, process-CPU) seconds per call of each function, in alternating rounds.

  Each round times every function once (n calls each, n fixed per function after a
  calibration), so a slow spell of the machine hits all of them alike. Process CPU time
  counts the work of all this process's threads, and is the steadier figure on a machine
  shared with other jobs.
  """
  for fn in fns.values():  # compile and warm up
    fn()
  reps = {k: calibrate(fn) for k, fn in fns.items()}
  wall: dict[str, list[float]] = {k: [] for k in fns}
  cpu: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(reps[k]):
        fn()
      wall[k].append((time.perf_counter() - t0) / reps[k])
      cpu[k].append((time.process_time() - c0) / reps[k])
  return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}
