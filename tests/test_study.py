"""The seed studies' toolkit (train/common/study.py): the paired t interval's arithmetic, coverage
and refusals, and the release of compiled programs between runs."""

import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from train.common import plots
from train.common import study as st


def _paired(values, baseline, digits=3):
  return st.fmt_interval(*st.paired_difference(values, baseline), digits)


def test_paired_difference_is_the_mean_difference_with_the_t_interval():
  # d = (2, 3, 1): mean 2, s_d = 1, t(0.975, 2) = 4.302653, half width 4.302653 / sqrt(3).
  m, lo, hi = st.paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
  assert m == 2.0
  np.testing.assert_allclose([lo, hi], [2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5], rtol=1e-6)
  # A wider level widens it; one seed gives no interval.
  m90, lo90, hi90 = st.paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0], level=0.9)
  assert m90 == 2.0 and lo < lo90 < m90 < hi90 < hi
  assert st.paired_difference([5.0], [1.0]) == (4.0, 4.0, 4.0)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
  """Seeds share a large offset (the pairing removes it); 4,000 simulated 5-seed studies."""
  rng = np.random.default_rng(0)
  covered = 0
  trials = 4000
  for _ in range(trials):
    shared = rng.normal(0.0, 10.0, 5)  # seed-to-seed spread common to both conditions
    base = shared + rng.normal(0.0, 1.0, 5)
    cond = shared + 0.7 + rng.normal(0.0, 1.0, 5)
    _, lo, hi = st.paired_difference(cond, base)
    covered += lo <= 0.7 <= hi
  # Binomial(4000, 0.95) has standard deviation 0.0034: 0.94-0.96 is about 3 of them.
  assert 0.94 <= covered / trials <= 0.96


def test_fmt_interval_marks_an_interval_that_excludes_zero():
  assert _paired([3.0, 5.0, 4.0], [1.0, 2.0, 3.0], 1) == "+2.0 [-0.5, 4.5]"
  assert _paired([3.0, 4.1, 5.0], [1.0, 2.0, 3.0], 1) == "+2.0 [1.9, 2.2]*"


def test_paired_table_compares_every_condition_with_the_baseline_only_when_it_ran(tmp_path):
  runs = {"dropout": [{"v": 1.0}, {"v": 2.0}], "q": [{"v": 2.0}, {"v": 4.0}]}
  columns = {"v": (lambda r: r["v"], 2)}
  table, _ = st.paired_outputs(runs, "dropout", columns, str(tmp_path / "p.png"), "t")
  assert table.splitlines()[0] == "| condition - dropout | seeds | v |"
  assert table.splitlines()[2] == f"| q | 2 | {_paired([2.0, 4.0], [1.0, 2.0], 2)} |"
  assert (
    st.paired_outputs({"q": runs["q"]}, "dropout", columns, str(tmp_path / "n.png"), "t") is None
  )


def test_paired_plot_draws_the_tables_intervals(tmp_path, monkeypatch):
  runs = {
    "dropout": [{"v": 1.0, "w": 0.0}, {"v": 2.0, "w": 1.0}, {"v": 2.5, "w": 0.5}],
    "q=1.5": [{"v": 2.0, "w": 0.1}, {"v": 4.0, "w": 0.9}, {"v": 3.0, "w": 0.6}],
    "q=3": [{"v": 0.0, "w": 0.3}, {"v": 1.0, "w": 1.2}, {"v": 2.0, "w": 0.4}],
  }
  columns = {"v": (lambda r: r["v"], 2), "w": (lambda r: r["w"], 2)}
  drawn = []

  def save(panels, path, **kw):
    drawn.extend(panels)
    return str(path)

  monkeypatch.setattr(plots, "save_panels", save)
  path = str(tmp_path / "p.png")
  assert st.paired_outputs(runs, "dropout", columns, path, "t")[1] == path
  assert [p.title for p in drawn] == ["v", "w"]
  for panel, (f, _) in zip(drawn, columns.values(), strict=True):
    for name in ("q=1.5", "q=3"):
      want = st.paired_difference([f(r) for r in runs[name]], [f(r) for r in runs["dropout"]])
      assert panel.intervals[name] == want
  assert st.paired_outputs({"q=3": runs["q=3"]}, "dropout", columns, path, "t") is None


def test_interval_panels_write_a_png(tmp_path):
  path = plots.save_panels(
    [plots.IntervalPanel({"a": (1.0, 0.5, 1.5), "b": (-0.2, -0.4, 0.1)}, "diff", "v")],
    tmp_path / "x.png",
    suptitle="title",
  )
  image = matplotlib.image.imread(path)
  colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
  assert image.shape[0] > 100 and image.shape[1] > 100 and len(colours) > 10  # drawn, not blank


def test_paired_difference_refuses_unpaired_or_empty_input_and_a_bad_level():
  with pytest.raises(ValueError, match="one baseline value per value"):
    st.paired_difference([1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match="one baseline value per value"):
    st.paired_difference([], [])
  with pytest.raises(ValueError, match="level must be in"):
    st.paired_difference([1.0], [1.0], level=1.0)


@pytest.mark.skipif(sys.platform != "linux", reason="counts the process's memory maps in /proc")
def test_release_compiled_frees_the_programs_of_finished_runs():
  """A pmapped closure built per run (as every train_and_evaluate builds its step) stays loaded,
  with its memory maps, until the caches drop it: 10 runs add hundreds of maps without a release."""

  def maps() -> int:
    with open("/proc/self/maps") as f:
      return sum(1 for _ in f)

  def run(i: int) -> None:
    def step(x):
      for k in range(20):
        x = jnp.cumsum(jnp.sort(x * (k + i)))[::-1]
      return x

    jax.pmap(step)(jnp.ones((1, 64))).block_until_ready()

  run(-1)
  st.release_compiled()
  before = maps()
  for i in range(10):
    run(i)
    st.release_compiled()
  assert maps() - before <= 16
