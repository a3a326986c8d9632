"""Autoencoder training: pmapped train/eval steps and ``train_and_evaluate(config, workdir)``.

Per epoch it records the clean (noise-free) reconstruction loss on the test set and on up to
``train_eval_size`` training images, the running training loss (with noise), and the test set's
hidden-activation statistics: Hoyer sparsity (mean over examples; SPEC 3), the fraction of exact
zeros, and the mean of the non-zero activations (the scale the L_q penalty sees). Checkpoints (state,
data position, rng, history) are written every ``checkpoint_every_epochs`` and on SIGTERM/SIGINT;
a run started again in the same workdir resumes exactly.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax import lax

from models.autoencoder import REGULARIZERS, Autoencoder, reconstruction_loss
from sparseout_jax import hoyer_sparsity
from train.autoencoder import input_pipeline
from train.common import (
  checkpoint,
  data,
  guard,
  metrics,
  parallel,
  preemption,
  progress,
)

PROGRAM = "train.autoencoder.main"


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Check the config's values once, where they enter; raise ValueError naming the field."""
  if config.regularizer not in REGULARIZERS:
    raise ValueError(
      f"config.regularizer must be one of {REGULARIZERS}, got {config.regularizer!r}"
    )
  if not 0.0 <= float(config.rate) < 1.0:
    raise ValueError(f"config.rate is a drop probability in [0, 1), got {config.rate}")
  if float(config.q) <= 0:
    raise ValueError(f"config.q must be > 0, got {config.q}")
  if config.optimizer not in ("adam", "adamw", "sgd", "momentum"):
    raise ValueError(f"config.optimizer must be adam|adamw|sgd|momentum, got {config.optimizer!r}")
  if config.loss not in ("mse", "bce"):
    raise ValueError(f"config.loss must be 'mse' or 'bce', got {config.loss!r}")
  for name in ("batch_size", "num_epochs", "hidden", "eval_batch_size"):
    if int(config[name]) <= 0:
      raise ValueError(f"config.{name} must be positive, got {config[name]}")
  n = jax.local_device_count() * jax.process_count()
  if config.batch_size % n or config.eval_batch_size % jax.local_device_count():
    raise ValueError(
      f"config.batch_size ({config.batch_size}) must be divisible by the {n} devices and "
      f"config.eval_batch_size ({config.eval_batch_size}) by the {jax.local_device_count()} local ones"
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Optimizer from the config; weight decay acts on kernels only (biases are not decayed).

  ``adamw``: decoupled decay, w <- w - lr (adam_update + wd w). ``adam``/``sgd``/``momentum``:
  L2 in the gradient, g <- g + wd w (so for Adam it is rescaled per coordinate).
  """
  lr, wd = float(config.learning_rate), float(config.weight_decay)

  def kernels(params):
    return jax.tree.map(lambda p: p.ndim == 2, params)

  if config.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=wd, mask=kernels)
  base = {
    "adam": lambda: optax.adam(lr),
    "sgd": lambda: optax.sgd(lr),
    "momentum": lambda: optax.sgd(lr, momentum=float(config.momentum)),
  }[config.optimizer]()
  if wd == 0.0:
    return base
  return optax.chain(optax.add_decayed_weights(wd, mask=kernels), base)


def build_model(config: ml_collections.ConfigDict) -> Autoencoder:
  """The config's autoencoder with parameters initialised from ``config.seed``."""
  return Autoencoder(
    int(config.hidden),
    regularizer=config.regularizer,
    rate=float(config.rate),
    q=float(config.q),
    gradient=config.gradient,
    rngs=nnx.Rngs(params=int(config.seed)),
  )


def make_steps(
  graphdef: Any, rest: Any, tx: optax.GradientTransformation, config: ml_collections.ConfigDict
):
  """Return pmapped ``(train_step, eval_step)``.

  ``train_step(state, batch, key) -> (state, metrics)``: the noise key of device d at step s is
  ``fold_in(fold_in(key, s), d)``; gradients are averaged over devices. ``eval_step(params, batch,
  mask) -> sums`` returns masked sums over all devices (divide by ``sums["count"]``).
  """
  loss_kind, skip = config.loss, bool(config.skip_nonfinite)

  def train_step(state, batch, key):
    dkey = parallel.device_key(jax.random.fold_in(key, state["step"]))

    def loss_fn(params):
      logits, _ = nnx.merge(graphdef, params, rest)(batch["x"], dkey)
      return jnp.mean(reconstruction_loss(logits, batch["x"], loss_kind))

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    loss, grads = parallel.pmean((loss, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {
      "params": optax.apply_updates(state["params"], updates),
      "opt_state": opt_state,
      "step": state["step"] + 1,
    }
    ok = guard.all_finite((loss, grads))
    if skip:
      new = guard.select_tree(ok, new, {**state, "step": state["step"] + 1})
    return new, {"loss": loss, "ok": ok}

  def eval_step(params, batch, mask):
    logits, h = nnx.merge(graphdef, params, rest)(batch["x"])
    active = (h > 0).astype(jnp.float32)
    n_active = jnp.sum(active, axis=-1)
    sums = {
      "loss": jnp.sum(reconstruction_loss(logits, batch["x"], loss_kind) * mask),
      "hoyer": jnp.sum(hoyer_sparsity(h) * mask),
      "frac_zero": jnp.sum((1.0 - jnp.mean(active, axis=-1)) * mask),
      "mean_active": jnp.sum(jnp.sum(h, axis=-1) / jnp.maximum(n_active, 1.0) * mask),
      "count": jnp.sum(mask),
      "unit_active": jnp.sum(active * mask[:, None], axis=0),  # per hidden unit, for dead units
    }
    return lax.psum(sums, parallel.AXIS)

  return (
    jax.pmap(train_step, axis_name=parallel.AXIS, in_axes=(0, 0, None), donate_argnums=(0,)),
    jax.pmap(eval_step, axis_name=parallel.AXIS),
  )


def evaluate(eval_step, params_rep, images: np.ndarray, batch_size: int) -> dict[str, float]:
  """Clean loss and hidden statistics over ``images`` (this process's slice; summed over all).

  Returns:
    ``{"loss", "hoyer", "frac_zero", "mean_active"}`` averaged over examples, and ``dead_units``:
    the fraction of hidden units that are zero on every one of the images.
  """
  part = images[data.process_slice(len(images))]
  total: dict[str, Any] = {}
  n_batches = data.eval_num_batches(len(images), batch_size)
  for batch, mask in data.iterate_eval({"x": part}, batch_size, num_batches=n_batches):
    sums = parallel.unreplicate(eval_step(params_rep, parallel.shard(batch), parallel.shard(mask)))
    for k, v in sums.items():
      total[k] = total.get(k, 0.0) + np.asarray(v, np.float64)
  count = float(total.pop("count"))
  unit_active = total.pop("unit_active")
  out = {k: float(v) / count for k, v in total.items()}
  out["dead_units"] = float(np.mean(unit_active == 0))
  return out


def weight_norms(params: Any) -> dict[str, float]:
  """Frobenius norms of the encoder and decoder kernels (the scale the penalty trades against)."""
  return {
    "enc_kernel_norm": float(np.linalg.norm(np.asarray(params["encoder"]["kernel"]))),
    "dec_kernel_norm": float(np.linalg.norm(np.asarray(params["decoder"]["kernel"]))),
  }


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, datasets: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
  """Train the config's autoencoder, evaluating every epoch; resume from ``workdir`` if it has a checkpoint.

  Args:
    config: see ``configs/default.py``.
    workdir: output folder (checkpoints/, metrics.jsonl, tensorboard/).
    datasets: preloaded ``{"train", "test"}`` arrays (the sweep loads once); default: from the config.

  Returns:
    ``{"history": [per-epoch dicts], "workdir": str, "skipped_steps": int, "steps": int,
    "final_params": host arrays}``; history[0] is the untrained model (epoch 0).
  """
  validate_config(config)
  if datasets is None:
    datasets = input_pipeline.load_mnist(config.data_source, config.data_dir or None)
  train_x, test_x = datasets["train"], datasets["test"]
  train_eval_x = train_x[: int(config.train_eval_size)]
  steps_per_epoch = data.steps_per_epoch(len(train_x), int(config.batch_size))

  graphdef, params, rest = nnx.split(build_model(config), nnx.Param, ...)
  tx = make_optimizer(config)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  train_step, eval_step = make_steps(graphdef, rest, tx, config)
  key = jax.random.key(int(config.seed))

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), best_metric="test_loss")
  restored = ckpt.restore(state)
  history: list[dict[str, Any]] = []
  epoch, start_in_epoch, skipped = 0, 0, 0
  resumed_losses: list[float] = []  # the interrupted epoch's noisy losses so far
  if restored is not None:
    state, meta = restored
    epoch, start_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
    history, skipped = list(meta["history"]), int(meta.get("skipped_steps", 0))
    resumed_losses = [float(v) for v in meta.get("epoch_losses", [])]
  writer = metrics.MetricsWriter(workdir)
  nonfinite = guard.NonFiniteGuard(skip=bool(config.skip_nonfinite))
  nonfinite.skipped = skipped
  rstate = parallel.replicate(state)

  def eval_row(ep: int, train_loss: float | None) -> dict[str, Any]:
    test = evaluate(eval_step, rstate["params"], test_x, int(config.eval_batch_size))
    train = evaluate(eval_step, rstate["params"], train_eval_x, int(config.eval_batch_size))
    row = {"epoch": ep, "train_loss": train["loss"], "train_loss_noisy": train_loss}
    row.update({f"test_{k}": v for k, v in test.items()})
    row.update(weight_norms(parallel.unreplicate(rstate["params"])))
    row["skipped_steps"] = nonfinite.skipped
    writer.write(ep, {k: v for k, v in row.items() if v is not None})
    return row

  def save(ep: int, in_epoch: int, metrics_row: dict | None) -> None:
    meta = {
      "epoch": ep,
      "step_in_epoch": in_epoch,
      "history": history,
      "skipped_steps": nonfinite.skipped,
      # A mid-epoch checkpoint keeps the epoch's losses so far: the resumed epoch's mean is exact.
      "epoch_losses": losses if in_epoch else [],
    }
    meta["rng"] = checkpoint.key_to_json(key)
    m = {"test_loss": metrics_row["test_loss"]} if metrics_row else None
    ckpt.save(ep * steps_per_epoch + in_epoch, parallel.unreplicate(rstate), meta=meta, metrics=m)

  if not history:
    history.append(eval_row(0, None))
  total = int(config.num_epochs) * steps_per_epoch
  step = epoch * steps_per_epoch + start_in_epoch
  max_steps = int(config.max_steps) if int(config.max_steps) > 0 else total
  bar = progress.progress_bar(
    total=min(total, max_steps),
    initial=min(step, max_steps),
    desc=_run_name(config),
    disable=None if config.progress else True,
  )
  with preemption.PreemptionHandler() as preempt:
    while epoch < int(config.num_epochs) and step < max_steps:
      losses, resumed_losses = resumed_losses, []
      for batch in data.iterate_epoch(
        {"x": train_x},
        int(config.batch_size),
        int(config.data_seed),
        epoch,
        start_step=start_in_epoch,
      ):
        rstate, m = train_step(rstate, parallel.shard(batch), key)
        step, start_in_epoch = step + 1, start_in_epoch + 1
        m = parallel.unreplicate(m)
        last = ckpt.latest_step()
        if nonfinite.check(step, m["ok"], m["loss"], ckpt.path(last) if last is not None else None):
          losses.append(float(m["loss"]))
        bar.update(1)
        if step % 20 == 0 and losses:
          bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if preempt.should_stop() or step >= max_steps:
          break
      if preempt.should_stop():
        save(epoch, start_in_epoch, None)
        bar.close()
        preempt.exit(step, ckpt.path(step), preemption.resume_command(PROGRAM))
      if start_in_epoch < steps_per_epoch:  # stopped by max_steps inside an epoch: resumable
        save(epoch, start_in_epoch, None)
        break
      epoch, start_in_epoch = epoch + 1, 0
      history.append(eval_row(epoch, float(np.mean(losses)) if losses else None))
      if epoch % int(config.checkpoint_every_epochs) == 0 or epoch == int(config.num_epochs):
        save(epoch, 0, history[-1])
  bar.close()
  writer.close()
  ckpt.close()
  return {
    "history": history,
    "workdir": os.path.abspath(workdir),
    "skipped_steps": nonfinite.skipped,
    "steps": step,
    "final_params": checkpoint.to_host(parallel.unreplicate(rstate["params"])),
  }


def _run_name(config: ml_collections.ConfigDict) -> str:
  if config.regularizer == "sparseout":
    return f"sparseout q={float(config.q):g}"
  if config.regularizer == "bridgeout":
    return f"bridgeout q={float(config.q):g}"
  return "backprop" if config.regularizer == "none" else config.regularizer
