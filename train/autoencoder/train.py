"""Autoencoder training (paper 4.1): the shared loop with this program's model, loss and evaluation.

Per epoch it records the clean (noise-free) reconstruction loss on the test set (``eval/loss``) and
on up to ``train_eval_size`` training images (``eval/train_loss``), the noisy training loss
(``epoch/train_loss``), and the test set's hidden-activation statistics: Hoyer sparsity (mean over
examples; paper 4.1, ``eval/hoyer``), the fraction of exact zeros, the mean of the non-zero
activations (the scale the L_q penalty sees) and the fraction of dead units. Resume, checkpoints,
preemption and the non-finite policy are the shared loop's (:mod:`train.common.loop`).
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

from models.autoencoder import REGULARIZERS, Autoencoder, reconstruction_loss
from sparseout_jax import hoyer_sparsity
from train.autoencoder import input_pipeline
from train.common import data, errors, evaluation, labels, loop, parallel, run_control
from train.common import step as step_lib


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Check the config's values once, where they enter; raise ConfigError naming the field."""
  run_control.validate_run_control(config)  # before the state is placed (param_sharding)
  if config.regularizer not in REGULARIZERS:
    raise errors.ConfigError(
      f"config.regularizer must be one of {REGULARIZERS}, got {config.regularizer!r}"
    )
  if not 0.0 <= float(config.rate) < 1.0:
    raise errors.ConfigError(f"config.rate is a drop probability in [0, 1), got {config.rate}")
  if float(config.q) <= 0:
    raise errors.ConfigError(f"config.q must be > 0, got {config.q}")
  if config.optimizer not in ("adam", "adamw", "sgd", "momentum"):
    raise errors.ConfigError(
      f"config.optimizer must be adam|adamw|sgd|momentum, got {config.optimizer!r}"
    )
  if config.loss not in ("mse", "bce"):
    raise errors.ConfigError(f"config.loss must be 'mse' or 'bce', got {config.loss!r}")
  for name in ("batch_size", "num_epochs", "hidden", "eval_batch_size"):
    if int(config[name]) <= 0:
      raise errors.ConfigError(f"config.{name} must be positive, got {config[name]}")
  n = int(config.num_devices) or jax.device_count()
  local = int(config.num_devices) or jax.local_device_count()
  if config.batch_size % n or config.eval_batch_size % local:
    raise errors.ConfigError(
      f"config.batch_size ({config.batch_size}) must be divisible by the {n} devices and "
      f"config.eval_batch_size ({config.eval_batch_size}) by the {local} local ones"
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Optimizer from the config; weight decay acts on kernels only (biases are not decayed).

  ``adamw``: decoupled decay, w <- w - lr (adam_update + wd w). ``adam``/``sgd``/``momentum``:
  L2 in the gradient, g <- g + wd w (so for Adam it is rescaled per coordinate). Wrapped in
  ``optax.apply_if_finite`` when ``config.skip_nonfinite``.
  """
  lr, wd = float(config.learning_rate), float(config.weight_decay)

  def kernels(params):
    return jax.tree.map(lambda p: p.ndim == 2, params)

  if config.optimizer == "adamw":
    tx = optax.adamw(lr, weight_decay=wd, mask=kernels)
  else:
    tx = {
      "adam": lambda: optax.adam(lr),
      "sgd": lambda: optax.sgd(lr),
      "momentum": lambda: optax.sgd(lr, momentum=float(config.momentum)),
    }[config.optimizer]()
    if wd != 0.0:
      tx = optax.chain(optax.add_decayed_weights(wd, mask=kernels), tx)
  return step_lib.optimizer(tx, bool(config.skip_nonfinite))


def build_model(config: ml_collections.ConfigDict) -> Autoencoder:
  """The config's autoencoder with parameters initialised from ``config.seed``."""
  return Autoencoder(
    int(config.hidden),
    regularizer=config.regularizer,
    rate=float(config.rate),
    q=float(config.q),
    gradient=config.gradient,
    record_sparsity=bool(config.record_sparsity),
    rngs=nnx.Rngs(params=int(config.seed)),
  )


def make_steps(
  graphdef: Any,
  rest: Any,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  state_shardings: Any,
):
  """Return jitted ``(train_step, eval_step)``.

  ``train_step(state, batch, key) -> (state, metrics)`` is the shared step
  (:func:`train.common.step.make_train_step`) on the mean reconstruction loss of the global batch.
  ``eval_step(params, batch, mask) -> sums`` returns masked sums over the global batch (divide by
  ``sums["count"]``) and the Sparseout layer's sparsity records (``config.record_sparsity``).
  """
  loss_kind = config.loss

  def loss_fn(params, state, batch, key):
    model = nnx.merge(graphdef, params, rest)
    (logits, _), _ = nnx.capture(model, nnx.Intermediate)(batch["x"], key)
    return jnp.mean(reconstruction_loss(logits, batch["x"], loss_kind)), ({}, {})

  train_step = step_lib.make_train_step(loss_fn, tx, skip_nonfinite=bool(config.skip_nonfinite))

  def eval_step(params, batch, mask):
    model = nnx.merge(graphdef, params, rest)
    (logits, h), records = nnx.capture(model, nnx.Intermediate)(batch["x"])
    active = (h > 0).astype(jnp.float32)
    n_active = jnp.sum(active, axis=-1)
    sums = {
      "loss": jnp.sum(reconstruction_loss(logits, batch["x"], loss_kind) * mask),
      "hoyer": jnp.sum(hoyer_sparsity(h) * mask),
      "zero_fraction": jnp.sum((1.0 - jnp.mean(active, axis=-1)) * mask),
      "mean_active": jnp.sum(jnp.sum(h, axis=-1) / jnp.maximum(n_active, 1.0) * mask),
      "count": jnp.sum(mask),
      "unit_active": jnp.sum(active * mask[:, None], axis=0),  # per hidden unit, for dead units
    }
    return sums, evaluation.record_sums(records, mask)

  return step_lib.jit_train_step(train_step, state_shardings), jax.jit(eval_step)


def evaluate(
  eval_step, params: Any, images: np.ndarray, batch_size: int, mesh: jax.sharding.Mesh
) -> dict[str, float]:
  """Clean loss and hidden statistics over ``images`` (this process's slice; summed over all).

  Returns:
    ``{"loss", "hoyer", "zero_fraction", "mean_active"}`` averaged over examples,
    ``dead_units``: the fraction of hidden units that are zero on every one of the images, and
    the ``sparsity/<layer>/<stat>`` records.
  """
  total, records = evaluation.eval_sums(
    lambda batch, mask: eval_step(params, batch, mask), {"x": images}, batch_size, mesh
  )
  count = float(total.pop("count"))
  unit_active = total.pop("unit_active")
  out = {k: float(v) / count for k, v in total.items()}
  out["dead_units"] = float(np.mean(unit_active == 0))
  return out | evaluation.mean_records(records)


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
    workdir: output folder (checkpoints/, metrics.jsonl, tensorboard/, sparsity.png).
    datasets: preloaded ``{"train", "test"}`` arrays (the sweep loads once); default: from the config.

  Returns:
    ``{"history": [per-epoch rows], "workdir": str, "skipped_steps": int, "steps": int,
    "final_params": host arrays}``; history[0] is the untrained model (epoch 0).
  """
  validate_config(config)
  if datasets is None:
    datasets = input_pipeline.load_mnist(
      config.data_source, config.data_dir or None, verify=config.verify_data
    )
  train_x, test_x = datasets["train"], datasets["test"]
  train_eval_x = train_x[: int(config.train_eval_size)]
  batch_size, eval_batch = int(config.batch_size), int(config.eval_batch_size)
  steps_per_epoch = data.steps_per_epoch(len(train_x), batch_size)

  mesh = parallel.make_mesh(int(config.num_devices))
  graphdef, params, rest = nnx.split(build_model(config), nnx.Param, ...)
  tx = make_optimizer(config)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  state = parallel.put_state(state, mesh, config.param_sharding)
  train_step, eval_step = make_steps(graphdef, rest, tx, config, parallel.shardings(state))
  key = parallel.replicate_key(jax.random.key(int(config.seed)), mesh)

  def batches(epoch: int, start: int):
    for batch in data.iterate_epoch(
      {"x": train_x}, batch_size, int(config.data_seed), epoch, start_step=start
    ):
      yield parallel.put_batch(batch, mesh)

  def evaluate_epoch(state, info: loop.EpochInfo) -> dict[str, float]:
    test = evaluate(eval_step, state["params"], test_x, eval_batch, mesh)
    train = evaluate(eval_step, state["params"], train_eval_x, eval_batch, mesh)
    norms = weight_norms(parallel.to_host(state["params"]))
    return (
      {f"eval/{k}": v for k, v in test.items()}
      | {"eval/train_loss": train["loss"]}
      | {f"epoch/{k}": v for k, v in norms.items()}
    )

  program = loop.Program(
    module="train.autoencoder.main",
    label=labels.regularizer_label(config.regularizer, config.q),
    num_epochs=int(config.num_epochs),
    steps_in_epoch=lambda epoch: steps_per_epoch,
    batches=batches,
    train_step=lambda state, batch: train_step(state, batch, key),
    evaluate=evaluate_epoch,
    evaluate_untrained=True,
  )
  out = loop.run(program, config, workdir, state)
  return {
    "history": out.history,
    "workdir": os.path.abspath(workdir),
    "skipped_steps": out.skipped_steps,
    "steps": out.steps,
    "final_params": parallel.to_host(out.state["params"]),
  }
