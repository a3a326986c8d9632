"""Does q move a conv net's activation sparsity as the paper says (paper 4.3)? WRN on MNIST, over seeds.

``python -m train.wrn.study --workdir=runs/wrn_study`` (config: ``train/wrn/configs/study_mnist.py``).

Every condition (no noise, dropout, sparseout at each q) trains once per seed on the shipped MNIST
digits padded to 32 x 32 (:mod:`train.wrn.mnist`), everything else equal. The study then runs the
trained net on the 2,000 test digits without noise and measures, per block, the activation that
feeds the noise layer (``relu(bn1(conv0(.)))``, the "after_relu" placement): Hoyer's measure over
the channels at each pixel, averaged, and the fraction of exact zeros. It writes ``wrn.md`` (test
error from each run's ``metrics.jsonl`` and sparsity from its ``sparsity.json``, mean ± std over
seeds), ``wrn.png`` and ``study.json``. Running it again resumes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import sparseout_jax
from models.wrn import WideResNet
from train.common import cli, plots
from train.common import metrics as metrics_lib
from train.common import study as st

STATS = ("hoyer", "zero_fraction", "mean")


def run_config(
  base: ml_collections.ConfigDict, condition: str, seed: int
) -> ml_collections.ConfigDict:
  """A copy of ``base`` for one run: the condition's regulariser and q, parameter and data seed."""
  name, q = st.parse_condition(condition)
  cfg = ml_collections.ConfigDict({k: v for k, v in base.to_dict().items() if k != "study"})
  cfg.regularizer = "sparseout" if q is not None else name
  cfg.q = 2.0 if q is None else q
  cfg.seed = cfg.data_seed = int(seed)
  return cfg


def block_activations(model: WideResNet, x: jax.Array) -> dict[str, jax.Array]:
  """Per block, the clean activation at the noise layer's input (after_relu placement), eval mode.

  ``a_b = relu(bn1(conv0(relu(bn0(h_b)))))`` with running BatchNorm averages; ``h_{b+1} = block_b(h_b)``.

  Args:
    model: the WRN.
    x: ``(N, 32, 32, 3)`` normalised images.

  Returns:
    ``{"block0": (N, H, W, C), ...}``.
  """
  h = model.stem(x.astype(model.dtype))
  acts = {}
  for b, block in enumerate(model.blocks):
    o1 = nnx.relu(block.bn0(h, use_running_average=True))
    acts[f"block{b}"] = nnx.relu(block.bn1(block.conv0(o1), use_running_average=True))
    h = block(h, train=False, key=None)
  return acts


@jax.jit
def _batch_sums(graphdef, params, batch_stats, x):
  """Per block, the batch's statistics times its size (every image has the same number of pixels,
  so batch means weighted by batch size add up to the per-image mean)."""
  acts = block_activations(nnx.merge(graphdef, params, batch_stats), x)
  n = x.shape[0]
  return {
    k: {key: v * n for key, v in sparseout_jax.sparsity_stats(a).items()}
    | {"mean": jnp.mean(a) * n}
    for k, a in acts.items()
  }


def measure_sparsity(
  config: ml_collections.ConfigDict, params: Any, batch_stats: Any, test: Any, batch: int = 500
) -> dict[str, dict[str, float]]:
  """Mean over the test images of each block's Hoyer (over channels, pixel-averaged), zeros, mean.

  ``H(a) = (sqrt(C) - |a|_1 / |a|_2) / (sqrt(C) - 1)`` for the C channels at each pixel.

  Returns:
    ``{"block<b>": {"hoyer", "zero_fraction", "mean"}}``.
  """
  from train.wrn import input_pipeline, train

  graphdef, _, _ = nnx.split(train.build_model(config, test.num_classes), nnx.Param, nnx.BatchStat)
  total: dict[str, dict[str, float]] = {}
  for i in range(0, len(test), batch):
    x = input_pipeline.normalize(test.images[i : i + batch])
    sums = _batch_sums(graphdef, params, batch_stats, jnp.asarray(x))
    for site, s in sums.items():
      for k, v in s.items():
        total.setdefault(site, {}).setdefault(k, 0.0)
        total[site][k] += float(v)
  return {site: {k: v / len(test) for k, v in s.items()} for site, s in total.items()}


def read_run(workdir: str) -> dict[str, Any]:
  """One finished run's numbers from its files: test error curve (metrics.jsonl) and sparsity."""
  rows = [
    r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval/error" in r
  ]
  with open(os.path.join(workdir, "sparsity.json")) as f:
    sparsity = json.load(f)
  return {
    "epochs": [int(r["epoch"]) for r in rows],
    "test_error": [r["eval/error"] for r in rows],
    "train_error": [r.get("epoch/train_error", float("nan")) for r in rows],
    "sparsity": sparsity,
  }


def results_table(runs: dict[str, list[dict[str, Any]]]) -> str:
  """Markdown: per condition, final test error, then per block Hoyer and zero fraction."""
  blocks = list(next(iter(runs.values()))[0]["sparsity"])
  rows = []
  for name, rs in runs.items():
    row = [name, len(rs), st.fmt([r["test_error"][-1] for r in rs], 2)]
    for b in blocks:
      row.append(st.fmt([r["sparsity"][b]["hoyer"] for r in rs], 3))
      row.append(st.fmt([r["sparsity"][b]["zero_fraction"] for r in rs], 3))
    rows.append(row)
  head = ["condition", "seeds", "test error %"]
  for b in blocks:
    head += [f"{b} Hoyer", f"{b} zeros"]
  return st.markdown_table(head, rows)


def paired_columns(runs: dict[str, list[dict[str, Any]]]) -> st.Columns:
  """What the paired table and plot compare: final test error and every block's Hoyer measure."""
  blocks = list(next(iter(runs.values()))[0]["sparsity"])
  columns = {"test error %": (lambda r: r["test_error"][-1], 2)}
  for b in blocks:
    columns[f"{b} Hoyer"] = (lambda r, b=b: r["sparsity"][b]["hoyer"], 3)
  return columns


def _against_q(runs: dict[str, list[dict[str, Any]]], value) -> dict[str, tuple[list, list]]:
  """Series of ``value(run)`` against q: mean, min and max over seeds (dropout is q = 2), and the
  no-noise mean as a flat line."""
  qs = sorted(
    (2.0 if n == "dropout" else float(n.removeprefix("sparseout_q")), n)
    for n in runs
    if n != "none"
  )
  x = [q for q, _ in qs]
  per_q = [[value(r) for r in runs[n]] for _, n in qs]
  series = {
    "sparseout / dropout at q=2 (mean)": (x, [st.mean_std(v)[0] for v in per_q]),
    "min over seeds": (x, [min(v) for v in per_q]),
    "max over seeds": (x, [max(v) for v in per_q]),
  }
  if "none" in runs and x:
    m = st.mean_std([value(r) for r in runs["none"]])[0]
    series["no noise (mean)"] = ([x[0], x[-1]], [m, m])
  return series


def write_plot(runs: dict[str, list[dict[str, Any]]], workdir: str, title: str) -> str:
  """wrn.png: one panel per block (test Hoyer against q) and one of the test error against q."""
  blocks = list(next(iter(runs.values()))[0]["sparsity"])
  panels = [
    plots.Panel(
      _against_q(runs, lambda r, b=b: r["sparsity"][b]["hoyer"]),
      "q",
      "test Hoyer over channels",
      f"{b}: input of its noise layer",
    )
    for b in blocks
  ]
  panels.append(
    plots.Panel(_against_q(runs, lambda r: r["test_error"][-1]), "q", "test error %", "Test error")
  )
  return plots.save_panels(
    panels, os.path.join(workdir, "wrn.png"), suptitle=title, ncols=min(len(panels), 2)
  )


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train every (condition, seed), measure the per-block sparsity, write the table, plot, json.

  Returns:
    ``{"runs": {condition: [run]}, "table": str, "title": str, "paths": {...}}``.
  """
  from train.wrn import mnist, train

  study = config.study
  data = mnist.load_mnist32(
    train_size=int(study.train_size),
    test_size=int(study.test_size),
    verify=bool(config.verify_data),
  )
  runs: dict[str, list[dict[str, Any]]] = {}
  for cond, name, seed, wd in st.each_run(study, workdir):
    if not os.path.exists(os.path.join(wd, "sparsity.json")):  # else the run is complete
      cfg = run_config(config, cond, seed)
      out = train.train_and_evaluate(cfg, wd, datasets=data)
      sparsity = measure_sparsity(cfg, out["params"], out["batch_stats"], data["test"])
      with open(os.path.join(wd, "sparsity.json"), "w") as f:
        json.dump(sparsity, f, indent=1)
    runs.setdefault(name, []).append(read_run(wd))
  title = (
    f"WRN-{config.depth}-{config.width} on MNIST 32x32 ({study.train_size} train / "
    f"{study.test_size} test), batch {config.batch_size}, "
    f"{config.num_epochs} epochs, rate {config.rate:g}, gradient={config.gradient}, "
    f"seeds {tuple(study.seeds)}"
  )
  table = results_table(runs)
  texts = {"wrn": table}
  paths = {"plot": write_plot(runs, workdir, title)}
  paired_png = os.path.join(workdir, "paired.png")
  paired = st.paired_outputs(runs, study.baseline, paired_columns(runs), paired_png, title)
  if paired is not None:
    texts["paired"], paths["paired_plot"] = paired
  record = {"title": title, "runs": runs, "config": config.to_dict()}
  paths |= st.write_texts_and_record(workdir, texts, record)
  return {
    "runs": runs,
    "table": table,
    "paired": texts.get("paired"),
    "title": title,
    "paths": paths,
  }


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The command's entry: :func:`run_study` with compiled steps cached under the workdir."""
  st.use_compile_cache(workdir)
  return run_study(config, workdir)


def report(out: dict[str, Any]) -> None:
  """Print the table and where the outputs went."""
  print(out["title"] + "\n\n" + out["table"] + "\n")
  if out["paired"] is not None:
    print(out["paired"] + "\n")
  for kind, path in out["paths"].items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  # Flags are defined here, not at import, so tests can import both studies (and the sweep).
  cli.define_flags("train/wrn/configs/study_mnist.py", default_workdir="runs/wrn_study")
  cli.run("train.wrn.study", entry="main", report=report)
