"""The benchmarks' shared timing and the GPU suite's smoke mode (CPU, tiny sizes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import _timing, memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_alternating_rounds_rotate_the_order_and_time_per_unit():
  calls = []

  def runner(name, cost):
    def run(n):
      calls.append((name, n))
      _timing.time.sleep(cost * n)

    return run

  samples = _timing.alternating_rounds(
    {"a": runner("a", 0.01), "b": runner("b", 0.03)}, rounds=4, units={"a": 3, "b": 1}
  )
  assert [c[0] for c in calls] == ["a", "b", "b", "a", "a", "b", "b", "a"]
  assert all(n == {"a": 3, "b": 1}[k] for k, n in calls)
  assert all(len(s["wall"]) == 4 and len(s["cpu"]) == 4 for s in samples.values())
  # per unit: a sleeps 10 ms, b 30 ms (a loaded machine only adds to each sleep)
  assert all(t >= 0.01 for t in samples["a"]["wall"])
  assert sorted(samples["a"]["wall"])[1] < 0.03  # divided by its 3 units (undivided: >= 0.03)
  assert all(t >= 0.03 for t in samples["b"]["wall"])


def test_paired_ratio_pairs_round_by_round():
  samples = {
    "ref": {"wall": [1.0, 2.0, 4.0, 1.0, 2.0], "cpu": [1.0, 1.0, 1.0, 1.0, 1.0]},
    "x": {"wall": [1.1, 2.2, 4.4, 1.1, 2.2], "cpu": [0.9, 1.0, 1.1, 1.0, 1.0]},
  }
  r = _timing.paired_ratio(samples, "x", "ref")
  # every round's wall ratio is 1.1 although the rounds' speeds differ 4x: pairing removes the drift
  assert r["wall"]["rounds"] == pytest.approx([1.1] * 5)
  assert r["wall"]["ci"] == pytest.approx((1.1, 1.1))
  assert r["cpu"]["median"] == 1.0
  assert r["cpu"]["ci"][0] <= 1.0 <= r["cpu"]["ci"][1]


def test_bootstrap_ci_is_deterministic_and_narrows_with_agreeing_rounds():
  spread = [0.9, 1.1, 1.0, 1.05, 0.95, 1.2, 0.8]
  tight = [1.0, 1.001, 0.999, 1.0, 1.0005, 0.9995, 1.0]
  a, b = _timing.bootstrap_median_ci(spread), _timing.bootstrap_median_ci(spread)
  assert a == b
  lo, hi = _timing.bootstrap_median_ci(tight)
  assert 0.999 <= lo <= 1.0 <= hi <= 1.001
  assert hi - lo < (a[1] - a[0]) / 10


def test_extra_bytes_per_noised_element():
  rows = {
    "none": {"temp": 1000, "noised": 0},
    "dropout": {"temp": 1800, "noised": 100},
    "sparseout": {"temp": 1900, "noised": 100},
    "sparseout_remat": {"temp": 1700, "noised": 100},
  }
  assert memory.extra_bytes(rows) == {
    "sparseout_vs_dropout": 1.0,
    "sparseout_vs_none": 9.0,
    "sparseout_remat_vs_dropout": -1.0,
    "sparseout_remat_vs_none": 7.0,
    "dropout_vs_none": 8.0,
  }


def _table(path: str) -> list[list[str]]:
  """Data rows of the markdown table in a file (header and rule lines dropped)."""
  lines = [ln for ln in open(path).read().splitlines() if ln.startswith("| ")]
  return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


def _num(cell: str) -> float:
  return float(re.match(r"[-0-9.,]+", cell).group(0).replace(",", ""))


@pytest.mark.slow
def test_gpu_suite_smoke_writes_every_table_with_this_runs_numbers(tmp_path):
  """`gpu_suite.sh --smoke` on CPU: five tables whose numbers are the run's own (json) and consistent."""
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  # Tiny programs: LLVM's optimisations cost more than they save (halves the compile time here).
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
  proc = subprocess.run(
    ["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--smoke", "--out", str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  parts = ("op", "lstm", "lstm_cudnn", "wrn")
  res = {p: json.load(open(tmp_path / f"gpu_{p}.json")) for p in parts}
  assert all(r["meta"]["smoke"] is True for r in res.values())
  assert res["lstm_cudnn"]["cudnn_check"]["ok"], res["lstm_cudnn"]["cudnn_check"]

  op = _table(tmp_path / "gpu_op.md")
  assert len(op) == 4  # float32 and bfloat16 at two sizes
  for cells, row in zip(op, res["op"]["op"], strict=True):
    n, item = row["elements"], 4 if row["dtype"] == "float32" else 2
    assert _num(cells[1]) == n
    assert _num(cells[2]) == pytest.approx(row["ms"]["dropout"], rel=1e-3)
    assert _num(cells[3]) == pytest.approx(row["vs_dropout"]["sparseout_q1.5"]["median"], abs=1e-3)
    # GB/s is the minimal traffic of y, dx = f(x, w) over the measured time
    gbps = 4 * n * item / (row["ms"]["sparseout_q1.5"] / 1e3) / 1e9
    assert _num(cells[6]) == pytest.approx(gbps, rel=6e-3)
    assert _num(cells[8]) > 0

  # LSTM scan: float32 and bfloat16 x 3 noises; cuDNN: dropout, sparseout; WRN: 2 dtypes x 4 noises
  for key, unit, count in (("lstm", 10, 6), ("lstm_cudnn", 10, 2), ("wrn", 4, 8)):
    rows = _table(tmp_path / f"gpu_{key}.md")
    groups = res[key]["groups"]
    assert len(rows) == sum(len(g["ms"]) for g in groups.values()) == count
    for cells in rows:
      g = groups[cells[0]]
      ms = g["ms"][cells[1]]
      assert _num(cells[2]) == pytest.approx(ms, abs=1e-3) and ms > 0
      assert _num(cells[3]) == pytest.approx(unit / (ms / 1e3), rel=2e-3, abs=0.5)
      assert _num(cells[5]) > 0 and _num(cells[6]) > 0  # XLA FLOPs per unit, achieved TFLOP/s
      if cells[1] == "sparseout":
        assert _num(cells[4]) == pytest.approx(g["vs_dropout"]["sparseout"]["median"], abs=1e-3)

  mem = _table(tmp_path / "gpu_memory.md")
  assert len(mem) == 4 * 2 + 3 * 2 + 2  # WRN 4 noises, LSTM-scan 3, x 2 dtypes; cuDNN: 2 noises
  temps = {(c[0], c[1], c[2]): _num(c[3]) for c in mem}
  for model, by_dtype in {k: v for p in parts[1:] for k, v in res[p]["memory"].items()}.items():
    for dtype, by_noise in by_dtype.items():
      for noise, stats in by_noise.items():
        assert stats["temp"] > 0 and stats["argument"] > 0
        assert temps[(model, dtype, noise)] == pytest.approx(stats["temp"] / 2**20, abs=0.06)


def test_report_writes_the_command_date_and_machine_with_the_numbers(tmp_path):
  from benchmarks import report

  meta = report.metadata(None, note="x")
  assert {"command", "date", "platform", "devices", "cpu", "jax"} <= set(meta)
  md = report.table(("a", "b"), [(1, report.ratio_cell({"median": 1.0, "ci": (0.9, 1.2)}))])
  path = report.write(str(tmp_path), "t", meta, {"a": 1}, md, "Title line.\n\nMore.")
  text = open(path).read()
  assert text.startswith("# Title line.") and meta["command"] in text
  assert "| 1 | 1.000 [0.900, 1.200] |" in text
  assert json.load(open(tmp_path / "t.json"))["results"] == {"a": 1}
