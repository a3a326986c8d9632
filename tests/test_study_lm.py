"""The LM seed study (train/lm/study.py): its sparsity probe is the model's forward, its tables are
the runs' numbers, its chunked training logs each epoch once. Tiny mode end to end on real PTB."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import lstm_lm
from train.common import metrics as metrics_lib
from train.common import study as st
from train.lm import study
from train.lm.configs import study_tiny


def _paired(values, baseline, digits=3):
  return st.fmt_interval(*st.paired_difference(values, baseline), digits)


@pytest.fixture
def compile_cache(tmp_path):
  """The study's on-disk compilation cache for one test, restored afterwards."""
  old = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_cache"))
  yield
  jax.config.update("jax_compilation_cache_dir", old)


def _model(seed=0):
  reg = lstm_lm.Regularisation(rate_i=0.3, rate_h=0.3, rate_o=0.3, q_i=1.5, q_h=1.5, q_o=1.5)
  return lstm_lm.LSTMLM(50, 8, 12, 3, reg, rngs=nnx.Rngs(params=seed))


def test_site_activations_are_the_models_clean_forward():
  model = _model()
  ids = jax.random.randint(jax.random.key(1), (9, 4), 0, 50)
  carry = jax.tree.map(lambda c: c + 0.1, model.init_carry(4))
  graphdef, state = nnx.split(model)

  @jax.jit  # one compilation instead of one per eager op
  def both(state, ids, carry):
    m = nnx.merge(graphdef, state)
    return study.site_activations(m, ids, carry), m(ids, carry)

  (acts, new_carry), (_, want_carry, aux) = both(state, ids, carry)
  assert sorted(acts) == ["h0", "h1", "i", "o"]
  np.testing.assert_allclose(acts["o"], aux["raw"], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(acts["i"], model.embedding[...][ids])
  for got, want in zip(jax.tree.leaves(new_carry), jax.tree.leaves(want_carry), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert acts["h0"].shape == (9, 4, 12) and acts["o"].shape == (9, 4, 8)


def test_measured_sparsity_does_not_depend_on_the_windowing():
  """One window over the whole stream or many padded ones: every token counted once, carry flows."""
  model = _model(3)
  graphdef, params = nnx.split(model)
  data = np.asarray(jax.random.randint(jax.random.key(2), (58,), 0, 50))
  whole = study.measure_sparsity(graphdef, params, data, 1, 57)
  windows = study.measure_sparsity(graphdef, params, data, 1, 5)  # 12 windows, last padded
  acts, _ = study.site_activations(model, jnp.asarray(data[:-1])[:, None], model.init_carry(1))
  direct = float(jnp.mean(study.hoyer_sparsity(acts["h1"])))
  for site in ("i", "h0", "h1", "o"):
    for k in study.STATS:
      assert windows[site][k] == pytest.approx(whole[site][k], rel=1e-5, abs=1e-6), (site, k)
  assert whole["h1"]["hoyer"] == pytest.approx(direct, rel=1e-5)
  assert whole["o"]["zero_fraction"] == 0.0  # tanh-gated outputs: no exact zeros
  assert 0.0 < whole["o"]["hoyer"] < 1.0


def test_run_config_puts_the_condition_on_the_locked_sites_only():
  base = study_tiny.get_config()
  none = study.run_config(base, "none", 0.4, 7)
  drop = study.run_config(base, "dropout", 0.4, 7)
  so = study.run_config(base, "q=1.5", 0.4, 7)
  assert [none[f"rate_{s}"] for s in "eihow"] == [0.0] * 5
  assert [so[f"rate_{s}"] for s in "eihow"] == [0.0, 0.4, 0.4, 0.4, 0.0]
  assert (drop.impl, drop.q, so.impl, so.q, so.seed) == ("dropout", 2.0, "sparseout", 1.5, 7)
  assert "study" not in so and so.gradient == "reference"
  with pytest.raises(ValueError, match="study condition"):
    study.run_config(base, "q1.5", 0.4, 0)


def _cells(table: str, first: str, second: str | None = None) -> list[str]:
  for line in table.splitlines():
    cells = [c.strip() for c in line.strip("|").split("|")]
    if cells[0] == first and (second is None or cells[1] == second):
      return cells
  raise AssertionError(f"no row {first} {second} in\n{table}")


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path, shared_data, compile_cache):
  config = study_tiny.get_config()
  config.data_dir = str(shared_data / "ptb")
  out = study.run_study(config, str(tmp_path))
  for kind in ("perplexity_plot", "sparsity_plot", "perplexity", "sparsity", "json", "paired_plot"):
    assert os.path.getsize(out["paths"][kind]) > 300, kind
  # The search kept the rate with the best validation perplexity, read from its metrics file.
  search = {}
  for rate in (0.3, 0.6):
    rows = metrics_lib.read_jsonl(tmp_path / "search" / f"dropout_p{rate:g}" / "metrics.jsonl")
    search[rate] = [r for r in rows if "test/valid_ppl" in r][-1]["test/valid_ppl"]
  assert out["rate"] == min(search, key=search.get)
  ppl_table = open(out["paths"]["perplexity"]).read()
  sp_table = open(out["paths"]["sparsity"]).read()
  tests, hoyer_o = {}, {}
  for name in ("none", "sparseout_q1.5"):
    best, test, epochs, sparsity = [], [], [], []
    for seed in (0, 1):
      wd = tmp_path / "runs" / f"{name}_s{seed}"
      rows = metrics_lib.read_jsonl(wd / "metrics.jsonl")
      final = [r for r in rows if "test/ppl" in r][-1]
      best.append(final["test/valid_ppl"])
      test.append(final["test/ppl"])
      evals = [r for r in rows if "eval/ppl" in r]
      epochs.append([r["epoch"] for r in evals])
      sparsity.append(metrics_lib.read_jsonl(wd / "sparsity.jsonl"))
      # The probe measures what the program's own records measure at each site (the program
      # leaves out the one padded validation window, hence the tolerance).
      for site, path in (("i", "site_i"), ("h0", "site_h/0"), ("o", "site_o")):
        for probe, logged in zip(sparsity[-1], evals, strict=True):
          program = logged[f"eval/sparsity/{path}/hoyer"]
          assert probe["sites"][site]["hoyer"] == pytest.approx(program, abs=0.02), (site, wd)
    # Chunked training: each epoch trained and logged once, sparsity measured after each chunk.
    assert epochs == [[1, 2], [1, 2]]
    assert [[r["epoch"] for r in s] for s in sparsity] == [[1, 2], [1, 2]]
    tests[name], hoyer_o[name] = test, [s[-1]["sites"]["o"]["hoyer"] for s in sparsity]
    cells = _cells(ppl_table, name)
    assert cells[1] == "2" and cells[2] == st.fmt(best, 1) and cells[3] == st.fmt(test, 1)
    for site in ("i", "h0", "o"):
      cells = _cells(sp_table, name, site)
      hoyer = [s[-1]["sites"][site]["hoyer"] for s in sparsity]
      zeros = [s[-1]["sites"][site]["zero_fraction"] for s in sparsity]
      assert cells[2] == st.fmt(hoyer, 3) and cells[3] == st.fmt(zeros, 3)
      assert re.fullmatch(r"0\.\d{3} ± 0\.\d{3}", cells[2])
  # The paired table: sparseout minus the baseline (no noise here), seed by seed.
  paired = open(out["paths"]["paired"]).read()
  cells = _cells(paired, "sparseout_q1.5")
  assert paired.startswith("| condition - none |") and cells[1] == "2"
  assert cells[3] == _paired(tests["sparseout_q1.5"], tests["none"], 1)
  column = _cells(paired, "condition - none").index("Hoyer o")
  assert cells[column] == _paired(hoyer_o["sparseout_q1.5"], hoyer_o["none"], 3)
  # Running it again resumes: nothing retrains, the same numbers come back.
  again = study.run_study(config, str(tmp_path))
  assert again["tables"] == out["tables"]
