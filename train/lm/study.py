"""Does q do in the LSTM LM what the paper says (paper 4.4)? Perplexity and per-site sparsity over seeds.

``python -m train.lm.study --workdir=runs/lm_study`` (config: ``train/lm/configs/study.py``).

1. A short search trains dropout once per rate of ``study.search_rates`` and keeps the rate with the
   best validation perplexity; every condition then uses it.
2. Every condition (no noise, dropout, sparseout at each q) trains once per seed, everything else
   equal, in chunks of ``study.sparsity_every`` epochs (the program resumes exactly from its
   checkpoint). After each chunk the study loads the latest parameters and measures the clean
   (noise-free) activations at the input of each noise site on the validation slice: ``i`` the
   embedding output, ``h<l>`` the output of LSTM layer l feeding the next layer, ``o`` the last
   LSTM output.
3. It writes ``perplexity.md`` / ``.png`` (best validation and matching test perplexity from each
   run's ``metrics.jsonl``; validation curves), ``sparsity.md`` / ``.png`` (per site, from each run's
   ``sparsity.jsonl``) and ``study.json`` (every number). Running it again resumes.

LSTM outputs are ``sigmoid * tanh``, in (-1, 1) and almost never exactly 0, so "sparser" cannot mean
more zeros there. The study reports Hoyer's measure of ``|a|`` over the features (how much of the
vector's mass sits in few units), the exact-zero fraction (about 0 without ReLUs), the fraction of
``|a| < 0.01`` (near-zero units) and the mean ``|a|``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from models import lstm_lm
from sparseout_jax import hoyer_sparsity
from train.common import cli, plots
from train.common import metrics as metrics_lib
from train.common import study as st

NEAR_ZERO = 0.01  # |a| below this counts as a near-zero unit
STATS = ("hoyer", "zero_fraction", "near_zero_fraction", "mean_abs")


def run_config(
  base: ml_collections.ConfigDict, condition: str, rate: float, seed: int
) -> ml_collections.ConfigDict:
  """A copy of ``base`` for one run: the condition's noise at rate ``rate`` on sites i, h, o."""
  name, q = st.parse_condition(condition)
  cfg = ml_collections.ConfigDict({k: v for k, v in base.to_dict().items() if k != "study"})
  cfg.seed = int(seed)
  for s in "iho":
    cfg[f"rate_{s}"] = 0.0 if name == "none" else float(rate)
  cfg.impl = "dropout" if name == "dropout" else "sparseout"
  cfg.q = 2.0 if q is None else q
  return cfg


def site_activations(
  model: lstm_lm.LSTMLM, ids: jax.Array, carry: lstm_lm.Carry
) -> tuple[dict[str, jax.Array], lstm_lm.Carry]:
  """Clean activations at the input of each noise site, as the model computes them without noise.

  ``i = E[ids]``; ``h<l> = LSTM_l(...)`` for every layer but the last; ``o = LSTM_L(...)``
  (equal to the model's ``aux["raw"]``).

  Args:
    model: the LM (its ``compute_dtype`` is ignored: float32 here).
    ids: ``(T, B)`` token ids.
    carry: per-layer ``(h, c)``.

  Returns:
    ``({"i": (T, B, E), "h0": (T, B, H), ..., "o": (T, B, E)}, new carry)``.
  """
  x = model.embedding[...][ids]
  acts, new_carry = {"i": x}, []
  last = len(model.layers) - 1
  for li, (layer, (h0, c0)) in enumerate(zip(model.layers, carry, strict=True)):
    xproj = x @ layer.w_ih[...] + (layer.b_ih[...] + layer.b_hh[...])
    x, hc = lstm_lm.lstm_scan(xproj, layer.w_hh[...], h0, c0)
    new_carry.append(hc)
    acts["o" if li == last else f"h{li}"] = x
  return acts, tuple(new_carry)


@jax.jit
def _window_sums(graphdef, params, carry, ids, weights):
  """Weighted sums of each statistic over the window's (t, b) vectors, and the new carry."""
  acts, carry = site_activations(nnx.merge(graphdef, params), ids, carry)
  sums = {}
  for site, a in acts.items():
    per_vec = {
      "hoyer": hoyer_sparsity(a),
      "zero_fraction": jnp.mean(a == 0, axis=-1),
      "near_zero_fraction": jnp.mean(jnp.abs(a) < NEAR_ZERO, axis=-1),
      "mean_abs": jnp.mean(jnp.abs(a), axis=-1),
    }
    sums[site] = {k: jnp.sum(v * weights) for k, v in per_vec.items()}
  return sums, carry


def measure_sparsity(
  graphdef: Any, params: Any, data: np.ndarray, batch_size: int, bptt: int
) -> dict[str, dict[str, float]]:
  """Mean of each statistic over every (position, stream) vector of ``data``, per site.

  Hoyer ``H(a) = (sqrt(d) - |a|_1 / |a|_2) / (sqrt(d) - 1)`` over the d features, then averaged.

  Returns:
    ``{site: {"hoyer", "zero_fraction", "near_zero_fraction", "mean_abs"}}``.
  """
  from train.lm import input_pipeline as ip

  carry = nnx.merge(graphdef, params).init_carry(batch_size)
  total: dict[str, dict[str, float]] = {}
  count = 0.0
  for b in ip.eval_batches(data, batch_size, bptt):
    sums, carry = _window_sums(graphdef, params, carry, b.inputs, b.weights)
    count += float(b.weights.sum())
    for site, s in sums.items():
      for k, v in s.items():
        total.setdefault(site, {}).setdefault(k, 0.0)
        total[site][k] += float(v)
  return {site: {k: v / count for k, v in s.items()} for site, s in total.items()}


def latest_params(config: ml_collections.ConfigDict, workdir: str, vocab_size: int):
  """``(graphdef, params)`` of the newest checkpoint the LM program wrote in ``workdir``.

  The restore template is the program's own state (``train.init_state``, the optimizer state as
  checkpoints hold it); the parameters are the NT-ASGD average once it switched, as the program's.
  """
  from train.common import loop
  from train.lm import train

  graphdef, state, _ = train.init_state(config, vocab_size)
  restored, _ = loop.restore(workdir, state)
  params, _ = train.averaged(restored)
  return graphdef, jax.tree.map(jnp.asarray, params)


def train_with_sparsity(cfg: ml_collections.ConfigDict, workdir: str, every: int, data) -> None:
  """Train ``cfg`` in chunks of ``every`` epochs; after each, append the sparsity to sparsity.jsonl."""
  from train.lm import train

  path = os.path.join(workdir, "sparsity.jsonl")
  done = {r["epoch"] for r in metrics_lib.read_jsonl(path)} if os.path.exists(path) else set()
  ends = sorted({min(e, cfg.num_epochs) for e in range(every, cfg.num_epochs + every, every)})
  for end in ends:
    if end in done:
      continue
    chunk = ml_collections.ConfigDict(cfg.to_dict())
    chunk.num_epochs = end
    train.train_and_evaluate(chunk, workdir)
    graphdef, params = latest_params(chunk, workdir, len(data.vocab))
    sites = measure_sparsity(graphdef, params, data.valid, cfg.eval_batch_size, cfg.bptt)
    st.append_jsonl(path, {"epoch": end, "sites": sites})
    st.release_compiled()  # each chunk compiles its own programs


def read_run(workdir: str) -> dict[str, Any]:
  """One finished run's numbers, all read from its files.

  Returns:
    ``{"epochs", "valid_ppl" (curve), "train_ppl" (curve), "best_valid_ppl", "test_ppl",
    "best_epoch", "sparsity": [{"epoch", "sites"}]}``.
  """
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  epochs = [r for r in rows if "eval/ppl" in r]
  final = [r for r in rows if "test/ppl" in r][-1]
  sp_path = os.path.join(workdir, "sparsity.jsonl")
  return {
    "epochs": [int(r["epoch"]) for r in epochs],
    "valid_ppl": [r["eval/ppl"] for r in epochs],
    # (an epoch whose steps were all skipped has no train loss: nan)
    "train_ppl": [math.exp(min(r.get("epoch/train_nll", math.nan), 50.0)) for r in epochs],
    "best_valid_ppl": final["test/valid_ppl"],
    "test_ppl": final["test/ppl"],
    "best_epoch": int(final["test/best_epoch"]),
    "sparsity": metrics_lib.read_jsonl(sp_path) if os.path.exists(sp_path) else [],
  }


def perplexity_table(runs: dict[str, list[dict[str, Any]]]) -> str:
  """Markdown: per condition, best validation, its test perplexity, best epoch, last train ppl."""
  rows = []
  for name, rs in runs.items():
    rows.append(
      [
        name,
        len(rs),
        st.fmt([r["best_valid_ppl"] for r in rs], 1),
        st.fmt([r["test_ppl"] for r in rs], 1),
        st.fmt([r["best_epoch"] for r in rs], 1),
        st.fmt([r["valid_ppl"][-1] for r in rs], 1),
        st.fmt([r["train_ppl"][-1] for r in rs], 1),
      ]
    )
  head = [
    "condition",
    "seeds",
    "best valid ppl",
    "test ppl (best ckpt)",
    "best epoch",
    "last valid ppl",
    "last train ppl",
  ]
  return st.markdown_table(head, rows)


def paired_columns(runs: dict[str, list[dict[str, Any]]]) -> st.Columns:
  """What the paired table and plot compare: best validation and test perplexity, and the last
  measurement's Hoyer at every site."""
  sites = list(next(iter(runs.values()))[0]["sparsity"][-1]["sites"])
  columns = {
    "best valid ppl": (lambda r: r["best_valid_ppl"], 1),
    "test ppl": (lambda r: r["test_ppl"], 1),
  }
  for site in sites:
    columns[f"Hoyer {site}"] = (lambda r, s=site: r["sparsity"][-1]["sites"][s]["hoyer"], 3)
  return columns


def sparsity_table(runs: dict[str, list[dict[str, Any]]]) -> str:
  """Markdown: per condition and site, the last measurement's statistics (mean ± std over seeds)."""
  rows = []
  for name, rs in runs.items():
    for site in rs[0]["sparsity"][-1]["sites"]:
      vals = [r["sparsity"][-1]["sites"][site] for r in rs]
      rows.append([name, site, *[st.fmt([v[k] for v in vals], 3) for k in STATS]])
  epoch = next(iter(runs.values()))[0]["sparsity"][-1]["epoch"]
  head = ["condition", "site", f"Hoyer (epoch {epoch})", "zero fraction", "|a| < 0.01", "mean |a|"]
  return st.markdown_table(head, rows)


def write_plots(runs: dict[str, list[dict[str, Any]]], workdir: str, title: str) -> dict[str, str]:
  """perplexity.png (validation and train curves, mean over seeds) and sparsity.png (Hoyer per site)."""
  valid, train = {}, {}
  for name, rs in runs.items():
    ep = rs[0]["epochs"][: min(len(r["epochs"]) for r in rs)]
    valid[name] = (ep, st.mean_curve([r["valid_ppl"] for r in rs]))
    train[name] = (ep, st.mean_curve([r["train_ppl"] for r in rs]))
  ppl = plots.save_panels(
    [
      plots.Panel(valid, "epoch", "validation perplexity (mean over seeds)", "Validation", True),
      plots.Panel(train, "epoch", "training perplexity (noisy, mean)", "Training", True),
    ],
    os.path.join(workdir, "perplexity.png"),
    suptitle=title,
  )
  sites = list(next(iter(runs.values()))[0]["sparsity"][-1]["sites"])
  panels = []
  for site in sites:
    series = {}
    for name, rs in runs.items():
      ep = [row["epoch"] for row in rs[0]["sparsity"]]
      series[name] = (
        ep,
        st.mean_curve([[x["sites"][site]["hoyer"] for x in r["sparsity"]] for r in rs]),
      )
    panels.append(plots.Panel(series, "epoch", "Hoyer of |a| (validation, mean)", f"site {site}"))
  sp = plots.save_panels(panels, os.path.join(workdir, "sparsity.png"), suptitle=title)
  return {"perplexity_plot": ppl, "sparsity_plot": sp}


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Search the rate, train every (condition, seed), write the tables, plots and study.json.

  Returns:
    ``{"rate", "search", "runs": {condition: [run]}, "tables": {...}, "paths": {...}}``.
  """
  from train.lm import train

  study = config.study
  data = train._load_data(config)
  search = {}
  for rate in study.search_rates:
    wd = os.path.join(workdir, "search", f"dropout_p{rate:g}")
    cfg = run_config(config, "dropout", rate, study.search_seed)
    if not os.path.exists(os.path.join(wd, "results.json")):
      train.train_and_evaluate(cfg, wd)
    search[float(rate)] = read_run(wd)["best_valid_ppl"]
  rate = min(search, key=search.get)
  print(f"search: best valid ppl per dropout rate {search}; using rate {rate:g}", flush=True)
  runs: dict[str, list[dict[str, Any]]] = {}
  for cond, name, seed, wd in st.each_run(study, workdir):
    train_with_sparsity(run_config(config, cond, rate, seed), wd, study.sparsity_every, data)
    runs.setdefault(name, []).append(read_run(wd))
  title = (
    f"PTB first {config.max_train_tokens} train tokens, LM {config.emb_size}/{config.hidden_size}"
    f"x{config.num_layers}, rate {rate:g} on i,h,o, gradient={config.gradient}, "
    f"seeds {tuple(study.seeds)}"
  )
  tables = {"perplexity": perplexity_table(runs), "sparsity": sparsity_table(runs)}
  out = {"rate": rate, "search": search, "runs": runs, "title": title}
  paths = write_plots(runs, workdir, title)
  paired_png = os.path.join(workdir, "paired.png")
  paired = st.paired_outputs(runs, study.baseline, paired_columns(runs), paired_png, title)
  if paired is not None:
    tables["paired"], paths["paired_plot"] = paired
  paths |= st.write_texts_and_record(workdir, tables, dict(out, config=config.to_dict()))
  return dict(out, tables=tables, paths=paths)


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The command's entry: :func:`run_study` with compiled steps cached under the workdir."""
  st.use_compile_cache(workdir)
  return run_study(config, workdir)


def report(out: dict[str, Any]) -> None:
  """Print the tables and where the outputs went."""
  print(out["title"], f"\nsearch (dropout rate -> best valid ppl): {out['search']}\n")
  for text in out["tables"].values():
    print(text + "\n")
  for kind, path in out["paths"].items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  # Flags are defined here, not at import, so tests can import both studies (and the sweep).
  cli.define_flags("train/lm/configs/study.py", default_workdir="runs/lm_study")
  cli.run("train.lm.study", entry="main", report=report)
