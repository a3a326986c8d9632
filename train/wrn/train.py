"""WRN training on CIFAR: pmapped train/eval steps and ``train_and_evaluate(config, workdir)``.

One jitted, pmapped step per global batch: per-device noise keys ``fold_in(fold_in(key, step), device)``,
gradients and metrics ``pmean``ed over devices, BatchNorm statistics averaged across devices inside the model
(``axis_name``), SGD nesterov with L2 weight decay and a piecewise-constant learning rate. Per epoch: train loss
and error (noisy, from the training steps), test loss and error (running BN averages, no noise), images/s,
learning rate. Checkpoints (state, data position, rng, history) every ``checkpoint_every_epochs``, at
``max_steps`` and on SIGTERM/SIGINT; running the same command again resumes exactly where it stopped.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax import lax

from models.wrn import PLACEMENTS, REGULARIZERS, WideResNet
from train.common import (
  checkpoint,
  guard,
  metrics,
  parallel,
  plots,
  preemption,
  progress,
)
from train.wrn import input_pipeline

PROGRAM = "train.wrn.main"
# Step metrics stay on the device and are fetched every LOG_EVERY steps: no per-step host sync, so the host
# prepares the next batches while the accelerator computes. A non-finite step is still caught before any
# checkpoint is written (checkpoints follow a drain).
LOG_EVERY = 20
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Check the config's values once, where they enter; raise ValueError naming the field."""
  if config.dataset not in input_pipeline.NUM_CLASSES:
    raise ValueError(
      f"config.dataset must be one of {tuple(input_pipeline.NUM_CLASSES)}, got {config.dataset!r}"
    )
  if config.data_source not in input_pipeline.SOURCES:
    raise ValueError(
      f"config.data_source must be one of {input_pipeline.SOURCES}, got {config.data_source!r}"
    )
  if config.regularizer not in REGULARIZERS:
    raise ValueError(
      f"config.regularizer must be one of {REGULARIZERS}, got {config.regularizer!r}"
    )
  if config.placement not in PLACEMENTS:
    raise ValueError(f"config.placement must be one of {PLACEMENTS}, got {config.placement!r}")
  if config.dtype not in (*DTYPES, "auto"):
    raise ValueError(f"config.dtype must be one of {(*DTYPES, 'auto')}, got {config.dtype!r}")
  if not 0.0 <= float(config.rate) < 1.0:
    raise ValueError(f"config.rate is a drop probability in [0, 1), got {config.rate}")
  if float(config.q) <= 0:
    raise ValueError(f"config.q must be > 0, got {config.q}")
  if int(config.depth) < 10 or (int(config.depth) - 4) % 6:
    raise ValueError(
      f"config.depth must have (depth - 4) a positive multiple of 6, got {config.depth}"
    )
  for name in ("width", "batch_size", "eval_batch_size", "num_epochs", "checkpoint_every_epochs"):
    if int(config[name]) <= 0:
      raise ValueError(f"config.{name} must be positive, got {config[name]}")
  if list(config.lr_boundaries) != sorted(config.lr_boundaries) or any(
    int(b) <= 0 for b in config.lr_boundaries
  ):
    raise ValueError(
      f"config.lr_boundaries must be increasing positive epochs, got {config.lr_boundaries}"
    )
  n, hosts, local = jax.device_count(), jax.process_count(), jax.local_device_count()
  if config.batch_size % n:
    raise ValueError(
      f"config.batch_size ({config.batch_size}) must be divisible by the {n} devices"
    )
  if config.eval_batch_size % (hosts * local):
    raise ValueError(
      f"config.eval_batch_size ({config.eval_batch_size}) must be divisible by the {n} devices"
    )


def compute_dtype(name: str) -> jnp.dtype:
  """float32 | bfloat16, or "auto": bfloat16 on GPU/TPU (tensor cores), float32 on CPU (no fast bf16 there)."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return DTYPES[name]


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> WideResNet:
  """The config's WRN (BN statistics averaged over the pmap axis), parameters from ``config.seed``."""
  return WideResNet(
    int(config.depth),
    int(config.width),
    num_classes,
    regularizer=config.regularizer,
    rate=float(config.rate),
    q=float(config.q),
    placement=config.placement,
    gradient=config.gradient,
    bn_momentum=float(config.bn_momentum),
    axis_name=parallel.AXIS,
    dtype=compute_dtype(config.dtype),
    rngs=nnx.Rngs(params=int(config.seed)),
  )


def learning_rate_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """lr(step) = learning_rate * lr_decay ** (number of boundaries, in epochs, already passed)."""
  return optax.piecewise_constant_schedule(
    float(config.learning_rate),
    {int(b) * steps_per_epoch: float(config.lr_decay) for b in config.lr_boundaries},
  )


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  """SGD (nesterov) with L2 weight decay on every parameter, as the reference's torch.optim.SGD.

  g <- g + wd w; buf <- mu buf + g; update = -lr (g + mu buf) (nesterov) or -lr buf. The same hyperparameters
  give the same (cached) object, so `make_steps` compiles once per process for repeated runs of one config.
  """
  return _sgd(
    float(config.learning_rate),
    float(config.lr_decay),
    tuple(int(b) * steps_per_epoch for b in config.lr_boundaries),
    float(config.momentum),
    bool(config.nesterov),
    float(config.weight_decay),
  )


@functools.lru_cache(maxsize=8)
def _sgd(
  lr: float, decay: float, boundaries: tuple[int, ...], momentum: float, nesterov: bool, wd: float
) -> optax.GradientTransformation:
  schedule = optax.piecewise_constant_schedule(lr, dict.fromkeys(boundaries, decay))
  return optax.chain(
    optax.add_decayed_weights(wd), optax.sgd(schedule, momentum=momentum, nesterov=nesterov)
  )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy -log softmax(logits)[label], in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


@functools.lru_cache(maxsize=8)
def make_steps(graphdef: Any, tx: optax.GradientTransformation, skip_nonfinite: bool):
  """Return pmapped ``(train_step, eval_step)`` (cached: runs of one config compile once per process).

  ``train_step(state, batch, key) -> (state, metrics)``; ``state`` = {params, batch_stats, opt_state, step}
  replicated over devices; the noise key of device d at step s is ``fold_in(fold_in(key, s), d)``.
  ``eval_step(params, batch_stats, batch) -> sums`` returns mask-weighted sums over all devices.
  """

  def train_step(state, batch, key):
    dkey = parallel.device_key(jax.random.fold_in(key, state["step"]))

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state["batch_stats"], copy=True)
      logits = model(batch["image"], train=True, key=dkey)
      loss = jnp.mean(cross_entropy(logits, batch["label"]))
      return loss, (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"]
    )
    error = jnp.mean((jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32))
    loss, error, grads = parallel.pmean((loss, error, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {
      "params": optax.apply_updates(state["params"], updates),
      "batch_stats": batch_stats,  # already identical on every device: BN pmeans its batch moments
      "opt_state": opt_state,
      "step": state["step"] + 1,
    }
    ok = guard.all_finite((loss, grads))
    if skip_nonfinite:
      new = guard.select_tree(ok, new, {**state, "step": state["step"] + 1})
    return new, {"loss": loss, "error": error, "ok": ok}

  def eval_step(params, batch_stats, batch):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits = model(batch["image"], train=False)
    mask = batch["mask"]
    wrong = (jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32)
    sums = {
      "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
      "error": jnp.sum(wrong * mask),
      "count": jnp.sum(mask),
    }
    return lax.psum(sums, parallel.AXIS)

  return (
    jax.pmap(train_step, axis_name=parallel.AXIS, in_axes=(0, 0, None), donate_argnums=(0,)),
    jax.pmap(eval_step, axis_name=parallel.AXIS),
  )


def evaluate(
  eval_step, rstate: dict, ds: input_pipeline.ArrayDataset, global_batch: int
) -> dict[str, float]:
  """Test loss and error (%) over every example of ``ds`` (each process reads its share of each batch)."""
  total = {"loss": 0.0, "error": 0.0, "count": 0.0}
  for batch in input_pipeline.eval_batches(
    ds, global_batch=global_batch, host_id=jax.process_index(), num_hosts=jax.process_count()
  ):
    sums = parallel.unreplicate(
      eval_step(rstate["params"], rstate["batch_stats"], parallel.shard(batch))
    )
    for k in total:
      total[k] += float(sums[k])
  return {"loss": total["loss"] / total["count"], "error": 100.0 * total["error"] / total["count"]}


def init_state(config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int):
  """``(graphdef, state, tx)`` for a fresh run: state = {params, batch_stats, opt_state, step}."""
  graphdef, params, batch_stats = nnx.split(
    build_model(config, num_classes), nnx.Param, nnx.BatchStat
  )
  tx = make_optimizer(config, steps_per_epoch)
  state = {
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": tx.init(params),
    "step": jnp.zeros((), jnp.int32),
  }
  return graphdef, state, tx


def load_datasets(config: ml_collections.ConfigDict) -> dict[str, input_pipeline.ArrayDataset]:
  """The config's train and test splits."""
  kw = {
    "source": config.data_source,
    "synthetic_size": int(config.synthetic_size),
    "seed": int(config.data_seed),
  }
  return {
    s: input_pipeline.load(config.dataset, s, config.data_dir or None, **kw)
    for s in ("train", "test")
  }


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  datasets: dict[str, input_pipeline.ArrayDataset] | None = None,
) -> dict[str, Any]:
  """Train the config's WRN, evaluating every epoch; resume from ``workdir`` if it has a checkpoint.

  Args:
    config: see ``configs/wrn28_10_cifar10.py``.
    workdir: output folder (checkpoints/, metrics.jsonl, tensorboard/, test_error.png).
    datasets: preloaded ``{"train", "test"}`` splits; default: loaded from the config.

  Returns:
    ``{"history": [per-epoch dicts], "workdir", "steps", "skipped_steps", "params"}`` (params unreplicated,
    as host numpy arrays).
  """
  validate_config(config)
  ds = datasets if datasets is not None else load_datasets(config)
  train_ds, test_ds = ds["train"], ds["test"]
  global_batch = int(config.batch_size)
  steps_per_epoch = input_pipeline.train_steps_per_epoch(len(train_ds), global_batch)
  graphdef, state, tx = init_state(config, train_ds.num_classes, steps_per_epoch)
  train_step, eval_step = make_steps(graphdef, tx, bool(config.skip_nonfinite))
  schedule = learning_rate_schedule(config, steps_per_epoch)
  key = jax.random.key(int(config.seed))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=1))

  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"), best_metric="test_error", best_mode="min"
  )
  restored = ckpt.restore(state)
  history: list[dict[str, Any]] = []
  epoch, start_in_epoch, skipped = 0, 0, 0
  if restored is not None:
    state, meta = restored
    epoch, start_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
    history, skipped = list(meta["history"]), int(meta.get("skipped_steps", 0))
    if int(meta.get("steps_per_epoch", steps_per_epoch)) != steps_per_epoch:
      raise ValueError(
        f"checkpoint in {workdir} was written with {meta['steps_per_epoch']} steps per epoch, this config "
        f"has {steps_per_epoch}; use the same batch_size and data, or a new --workdir"
      )
  writer = metrics.MetricsWriter(workdir)
  nonfinite = guard.NonFiniteGuard(skip=bool(config.skip_nonfinite))
  nonfinite.skipped = skipped
  rstate = parallel.replicate(state)

  def save(ep: int, in_epoch: int, row: dict | None, epoch_acc: dict | None = None) -> None:
    meta = {
      "epoch": ep,
      "step_in_epoch": in_epoch,
      "steps_per_epoch": steps_per_epoch,
      "history": history,
      "skipped_steps": nonfinite.skipped,
      "rng": checkpoint.key_to_json(key),
      "epoch_acc": epoch_acc or {},  # the partial epoch's training sums, for a mid-epoch resume
    }
    m = {"test_error": row["test_error"]} if row else None
    ckpt.save(ep * steps_per_epoch + in_epoch, parallel.unreplicate(rstate), meta=meta, metrics=m)

  total = int(config.num_epochs) * steps_per_epoch
  step = epoch * steps_per_epoch + start_in_epoch
  max_steps = int(config.max_steps) if int(config.max_steps) > 0 else total
  bar = progress.progress_bar(
    total=min(total, max_steps),
    initial=min(step, max_steps),
    desc=f"WRN-{config.depth}-{config.width} {config.dataset} {_reg_name(config)}",
    disable=None if config.progress else True,
  )
  # Running sums of the current epoch's noisy training metrics (kept across a mid-epoch resume).
  acc = dict(restored[1].get("epoch_acc", {})) if restored is not None else {}
  pending: list[tuple[int, Any]] = []

  def drain(pending: list[tuple[int, Any]], acc: dict) -> None:
    """Fetch buffered step metrics (one host sync per LOG_EVERY steps), check finiteness, accumulate."""
    last = ckpt.latest_step()
    for s, m in pending:
      m = parallel.unreplicate(m)
      if nonfinite.check(s, m["ok"], m["loss"], ckpt.path(last) if last is not None else None):
        acc["loss"] = acc.get("loss", 0.0) + float(m["loss"])
        acc["error"] = acc.get("error", 0.0) + float(m["error"])
        acc["n"] = acc.get("n", 0) + 1
    pending.clear()

  with preemption.PreemptionHandler() as preempt:
    while epoch < int(config.num_epochs) and step < max_steps:
      t0, n_images = time.perf_counter(), 0
      for batch in input_pipeline.train_batches(
        train_ds,
        global_batch=global_batch,
        seed=int(config.data_seed),
        epoch=epoch,
        host_id=jax.process_index(),
        num_hosts=jax.process_count(),
        start_batch=start_in_epoch,
      ):
        rstate, m = train_step(rstate, parallel.shard(batch), key)
        step, start_in_epoch = step + 1, start_in_epoch + 1
        pending.append((step, m))
        n_images += global_batch
        bar.update(1)
        stop = preempt.should_stop() or step >= max_steps
        if len(pending) >= LOG_EVERY or stop:
          drain(pending, acc)
          if acc.get("n"):
            bar.set_postfix(
              loss=f"{acc['loss'] / acc['n']:.3f}", err=f"{100 * acc['error'] / acc['n']:.1f}%"
            )
        if stop:
          break
      drain(pending, acc)
      elapsed = time.perf_counter() - t0
      if preempt.should_stop() or start_in_epoch < steps_per_epoch:  # stopped inside the epoch
        save(epoch, start_in_epoch, None, acc)
        if preempt.should_stop():
          bar.close()
          preempt.exit(step, ckpt.path(step), preemption.resume_command(PROGRAM))
        break
      test = evaluate(eval_step, rstate, test_ds, int(config.eval_batch_size))
      n = max(acc.get("n", 0), 1)
      row = {
        "epoch": epoch + 1,
        "train_loss": acc.get("loss", float("nan")) / n,
        "train_error": 100.0 * acc.get("error", float("nan")) / n,
        "test_loss": test["loss"],
        "test_error": test["error"],
        "lr": float(schedule(step - 1)),
        "images_per_s": n_images / elapsed if elapsed > 0 else float("nan"),
        "skipped_steps": nonfinite.skipped,
      }
      history.append(row)
      writer.write(epoch + 1, row)
      acc = {}
      epoch, start_in_epoch = epoch + 1, 0
      if epoch % int(config.checkpoint_every_epochs) == 0 or epoch == int(config.num_epochs):
        save(epoch, 0, row)
  bar.close()
  writer.close()
  ckpt.close()
  if jax.process_index() == 0 and history:
    real_wrn28_10 = config.data_source != "synthetic" and (config.depth, config.width) == (28, 10)
    reference = REFERENCE_ERROR[config.dataset] if real_wrn28_10 else None
    plot_curves(history, os.path.join(workdir, "test_error.png"), _reg_name(config), reference)
  return {
    "history": history,
    "workdir": os.path.abspath(workdir),
    "steps": step,
    "skipped_steps": nonfinite.skipped,
    "params": checkpoint.to_host(parallel.unreplicate(rstate["params"])),
    "batch_stats": checkpoint.to_host(parallel.unreplicate(rstate["batch_stats"])),
  }


# WRN-28-10 with dropout in the reference (Zagoruyko & Komodakis 2016), test error in %: the target a full run
# is judged against (SPEC section 4.3).
REFERENCE_ERROR = {"cifar10": 3.89, "cifar100": 18.85}


def plot_curves(
  history: list[dict[str, Any]], path: str, label: str, reference: float | None = None
) -> str:
  """PNG of test (and noisy train) error in % per epoch, with the reference error as a flat line if given."""
  epochs = [r["epoch"] for r in history]
  series = {
    f"test {label}": (epochs, [r["test_error"] for r in history]),
    f"train (noisy) {label}": (epochs, [r["train_error"] for r in history]),
  }
  if reference is not None:
    series[f"WRN-28-10 dropout reference {reference}%"] = ([epochs[0], epochs[-1]], [reference] * 2)
  return plots.save_panels(
    [plots.Panel(series, xlabel="epoch", ylabel="error (%)", title="WRN error")], path
  )


def _reg_name(config: ml_collections.ConfigDict) -> str:
  if config.regularizer == "sparseout":
    return f"sparseout q={float(config.q):g} p={float(config.rate):g}"
  if config.regularizer == "dropout":
    return f"dropout p={float(config.rate):g}"
  return "no noise"


def summary(out: dict[str, Any]) -> str:
  """The last finished epoch's metrics and the step reached, as JSON text (what main prints)."""
  last = (
    out["history"][-1] if out["history"] else {"note": "no epoch finished yet; run again to resume"}
  )
  return json.dumps({**last, "steps": out["steps"]}, indent=1)
