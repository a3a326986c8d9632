"""What the seed studies of every program share: mean and spread over seeds, markdown tables, curves.

A study trains one configuration per (condition, seed) and reports each number as the mean and the
sample standard deviation over the seeds (``ddof = 1``; 0 for a single seed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np


def parse_condition(spec: str) -> tuple[str, float | None]:
  """A study condition: ``"none"`` (no noise), ``"dropout"`` (q = 2) or ``"q=<float>"`` (sparseout).

  Returns:
    ``(run name, q)``; q is None except for sparseout (``"q=1.5" -> ("sparseout_q1.5", 1.5)``).

  Raises:
    ValueError: an unknown spec.
  """
  spec = spec.strip()
  if spec in ("none", "dropout"):
    return spec, None
  if spec.startswith("q="):
    q = float(spec[2:])
    return f"sparseout_q{q:g}", q
  raise ValueError(f"study condition {spec!r}: expected none, dropout or q=<float>")


def conditions(specs: str) -> list[str]:
  """The comma-separated condition specs of a study config, blanks dropped."""
  return [c.strip() for c in str(specs).split(",") if c.strip()]


def release_compiled() -> None:
  """Drop every compiled program of the runs so far (``jax.clear_caches``, then a collection).

  Each ``train_and_evaluate`` builds fresh jitted closures, and JAX's caches keep their loaded
  executables, each holding memory maps, for the life of the process. A 40-run LM study grew by
  about 4,000 maps a minute and crashed at the kernel's limit of 65,530 ("LLVM compilation
  error: Cannot allocate memory", then a segmentation fault). Multi-run drivers call this between
  runs; the compilation cache on disk (:func:`use_compile_cache`) makes the next load cheap.
  """
  import gc

  import jax

  jax.clear_caches()
  gc.collect()


def each_run(study: Any, workdir: str) -> Iterator[tuple[str, str, int, str]]:
  """Every (condition, seed) of a study config, condition-major, announced on stdout.

  The compiled programs of a run are released (:func:`release_compiled`) before the next one.

  Yields:
    ``(condition spec, run name, seed, run folder <workdir>/runs/<name>_s<seed>)``.
  """
  for cond in conditions(study.conditions):
    name, _ = parse_condition(cond)
    for seed in study.seeds:
      wd = os.path.join(workdir, "runs", f"{name}_s{seed}")
      print(f"[{name} seed {seed}] {wd}", flush=True)
      yield cond, name, int(seed), wd
      release_compiled()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation over seeds.

  ``m = sum(v) / n``; ``s = sqrt(sum((v - m)^2) / (n - 1))``, 0 when n = 1.

  Args:
    values: one number per seed (at least one).

  Returns:
    ``(m, s)`` as floats.

  Example:
    >>> mean_std([1.0, 3.0])
    (2.0, 1.4142135623730951)
  """
  a = np.asarray(values, np.float64)
  if a.size == 0:
    raise ValueError("mean_std needs at least one value")
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 3) -> str:
  """``"m ± s"`` of :func:`mean_std` with ``digits`` decimals, e.g. ``fmt([1, 3], 1) == "2.0 ± 1.4"``."""
  m, s = mean_std(values)
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def paired_difference(
  values: Sequence[float], baseline: Sequence[float], level: float = 0.95
) -> tuple[float, float, float]:
  r"""Mean difference from a baseline over paired seeds, with its Student-t confidence interval.

  Seed s sets a run's initialisation, data order and noise keys, so the runs of two conditions
  with the same seed share them; pairing removes that shared spread. With d_s = v_s - b_s over
  n seeds and s_d their sample standard deviation:

  .. math::
    \bar d = \frac{1}{n} \sum_s d_s, \qquad
    \bar d \pm t_{(1 + \text{level}) / 2,\, n - 1} \, s_d / \sqrt{n}.

  Args:
    values: one number per seed for the condition.
    baseline: the baseline's number for the same seeds, in the same order.
    level: the interval's coverage, in (0, 1).

  Returns:
    ``(mean, low, high)``; low = high = mean for one seed (no interval).

  Raises:
    ValueError: empty or unequal-length inputs, or a level outside (0, 1).

  Example:
    >>> tuple(round(v, 3) for v in paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0]))
    (2.0, -0.484, 4.484)
  """
  from scipy import stats  # a dependency of jax itself

  d = np.asarray(values, np.float64) - np.asarray(baseline, np.float64)
  if len(values) != len(baseline) or d.size == 0:
    raise ValueError(
      f"paired_difference needs one baseline value per value, got {len(values)} and {len(baseline)}"
    )
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  m = float(d.mean())
  if d.size == 1:
    return m, m, m
  half = float(stats.t.ppf((1.0 + level) / 2.0, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
  return m, m - half, m + half


def fmt_interval(m: float, lo: float, hi: float, digits: int = 3) -> str:
  """``"+m [lo, hi]"`` of a difference and its interval; a ``*`` marks an interval that excludes 0.

  Example:
    >>> fmt_interval(2.0, 1.9, 2.2, 1)
    '+2.0 [1.9, 2.2]*'
  """
  mark = "*" if lo > 0 or hi < 0 else ""
  return f"{m:+.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]{mark}"


Columns = Mapping[str, tuple[Any, int]]  # heading -> (value(run), decimals)


def paired_intervals(
  runs: Mapping[str, Sequence[Mapping[str, Any]]], baseline: str, columns: Columns
) -> dict[str, dict[str, tuple[float, float, float]]] | None:
  """Every condition minus ``baseline``, seed by seed, per column (:func:`paired_difference`).

  Args:
    runs: condition name -> its runs, in the study's seed order (the same seeds for every condition).
    baseline: the condition the others are compared with.
    columns: heading -> (``value(run)``, decimals).

  Returns:
    ``{heading: {condition: (mean, low, high)}}``, or None when ``baseline`` did not run or
    nothing else did.
  """
  if baseline not in runs or len(runs) < 2:
    return None
  base = runs[baseline]
  return {
    head: {
      name: paired_difference([f(r) for r in rs], [f(r) for r in base])
      for name, rs in runs.items()
      if name != baseline
    }
    for head, (f, _) in columns.items()
  }


def paired_outputs(
  runs: Mapping[str, Sequence[Mapping[str, Any]]],
  baseline: str,
  columns: Columns,
  png_path: str,
  title: str,
) -> tuple[str, str] | None:
  """The paired table and plot: each condition minus ``baseline``, seed by seed, per column.

  The table shows :func:`fmt_interval` of each paired difference per column; the plot (``png_path``) one panel per column,
  each condition's mean difference with its 95 % interval as an error bar, and a line at 0.

  Args: as :func:`paired_intervals`, and the PNG's path and title.

  Returns:
    ``(markdown table, absolute PNG path)``, or None when ``baseline`` did not run or nothing
    else did.
  """
  from train.common import plots

  intervals = paired_intervals(runs, baseline, columns)
  if intervals is None:
    return None
  rows = [
    [name, len(rs)] + [fmt_interval(*intervals[h][name], d) for h, (_, d) in columns.items()]
    for name, rs in runs.items()
    if name != baseline
  ]
  table = markdown_table([f"condition - {baseline}", "seeds", *columns], rows)
  panels = [
    plots.IntervalPanel(by_name, f"minus {baseline} (same seed)", head)
    for head, by_name in intervals.items()
  ]
  suptitle = f"{title}\nmean paired difference, 95 % t interval"
  return table, plots.save_panels(panels, png_path, suptitle=suptitle, ncols=3)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table: ``| a | b |`` lines under a ``|---|`` rule.

  Example:
    >>> print(markdown_table(["x", "y"], [[1, 2]]))
    | x | y |
    |---|---|
    | 1 | 2 |
  """
  lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
  return "\n".join(lines)


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
  """Pointwise mean of per-seed curves, cut to the shortest (``mean_curve([[1, 2], [3]]) == [2.0]``)."""
  n = min(len(c) for c in curves)
  return [float(v) for v in np.mean([list(c)[:n] for c in curves], axis=0)]


def append_jsonl(path: str, row: Mapping[str, Any]) -> None:
  """Append one JSON row to ``path`` (the study's own per-run records, e.g. sparsity per epoch)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(dict(row)) + "\n")


def write_texts_and_record(
  workdir: str, texts: Mapping[str, str], record: Mapping[str, Any]
) -> dict[str, str]:
  """Write each text to ``<workdir>/<name>.md`` and ``record`` to ``<workdir>/study.json``.

  Returns:
    ``{name: absolute path, ..., "json": absolute path}``.
  """
  paths = {}
  for name, text in texts.items():
    paths[name] = os.path.abspath(os.path.join(workdir, f"{name}.md"))
    with open(paths[name], "w") as f:
      f.write(text + "\n")
  paths["json"] = os.path.abspath(os.path.join(workdir, "study.json"))
  with open(paths["json"], "w") as f:
    json.dump(dict(record), f, indent=1, default=str)
  return paths


def use_compile_cache(workdir: str) -> None:
  """Keep compiled steps on disk under ``<workdir>/jax_cache``: a study's seeds and chunks of one
  condition compile the same programs, and a resumed study compiles nothing again."""
  import jax

  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
