"""WRN training on CIFAR (paper 4.3): the shared loop with this program's model, optimizer and evaluation.

One jitted step per global batch over the device mesh (:mod:`train.common.step`): noise masks and BatchNorm
statistics of the global batch, so the device count does not change the arithmetic (up to rounding), SGD
nesterov with L2 weight decay as the WRN reference: the learning rate falls by ``lr_decay`` at the start of the
epochs in ``lr_boundaries`` (1-based, 60/120/160), and the momentum buffer starts again from zero there (the
reference builds a new optimizer at each drop). Per epoch: noisy train loss and error, test loss and error
(running BN averages, no noise), the per-layer sparsity records, images/s, learning rate; a plot of the error
curves against the reference's. Resume, checkpoints, preemption and the non-finite policy are the shared loop's.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from models.wrn import PLACEMENTS, REGULARIZERS, WideResNet
from train.common import errors, evaluation, labels, loop, optimizers, parallel, plots, run_control
from train.common import step as step_lib
from train.wrn import augment, input_pipeline

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# WRN-28-10 with dropout in the reference (Zagoruyko & Komodakis 2016), test error in %: the target a full run
# is judged against (paper 4.3).
REFERENCE_ERROR = {"cifar10": 3.89, "cifar100": 18.85}


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Check the config's values once, where they enter; raise ConfigError naming the field."""
  run_control.validate_run_control(config)  # before the state is placed (param_sharding)
  choices = {
    "dataset": tuple(input_pipeline.NUM_CLASSES),
    "data_source": input_pipeline.SOURCES,
    "regularizer": REGULARIZERS,
    "placement": PLACEMENTS,
    "dtype": (*DTYPES, "auto"),
  }
  for name, allowed in choices.items():
    if config[name] not in allowed:
      raise errors.ConfigError(f"config.{name} must be one of {allowed}, got {config[name]!r}")
  if not 0.0 <= float(config.rate) < 1.0:
    raise errors.ConfigError(f"config.rate is a drop probability in [0, 1), got {config.rate}")
  if float(config.q) <= 0:
    raise errors.ConfigError(f"config.q must be > 0, got {config.q}")
  if int(config.depth) < 10 or (int(config.depth) - 4) % 6:
    raise errors.ConfigError(
      f"config.depth must have (depth - 4) a positive multiple of 6, got {config.depth}"
    )
  for name in ("width", "batch_size", "eval_batch_size", "num_epochs"):
    if int(config[name]) <= 0:
      raise errors.ConfigError(f"config.{name} must be positive, got {config[name]}")
  if list(config.lr_boundaries) != sorted(config.lr_boundaries) or any(
    int(b) < 2 for b in config.lr_boundaries
  ):
    raise errors.ConfigError(
      f"config.lr_boundaries must be increasing 1-based epochs >= 2, got {config.lr_boundaries}"
    )
  n = int(config.num_devices) or jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    if int(config[name]) % n:
      raise errors.ConfigError(
        f"config.{name} ({config[name]}) must be divisible by the {n} devices"
      )


def compute_dtype(name: str) -> jnp.dtype:
  """float32 | bfloat16, or "auto": bfloat16 on GPU/TPU (tensor cores), float32 on CPU (no fast bf16 there)."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return DTYPES[name]


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> WideResNet:
  """The config's WRN (BN statistics of the global batch under jit), parameters from ``config.seed``."""
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
    axis_name=None,
    dtype=compute_dtype(config.dtype),
    record_sparsity=bool(config.record_sparsity),
    remat_noise=bool(config.remat_noise),
    rngs=nnx.Rngs(params=int(config.seed)),
  )


def drop_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, ...]:
  """The global steps at which the learning rate drops: the start of each 1-based epoch in ``lr_boundaries``.

  The reference decays when ``epoch in epoch_step`` at the start of (1-based) epoch ``epoch``, so epochs
  1..59 run at 0.1 and epoch 60 starts at 0.02: step ``(b - 1) * steps_per_epoch``.

  Example:
    >>> drop_steps(ml_collections.ConfigDict({"lr_boundaries": (60, 120)}), 10)
    (590, 1190)
  """
  return tuple((int(b) - 1) * steps_per_epoch for b in config.lr_boundaries)


def learning_rate_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """lr(step) = learning_rate * lr_decay ** (number of drop steps <= step)."""
  return optax.piecewise_constant_schedule(
    float(config.learning_rate),
    dict.fromkeys(drop_steps(config, steps_per_epoch), float(config.lr_decay)),
  )


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  """SGD (nesterov) with L2 weight decay on every parameter, as the reference's torch.optim.SGD.

  g <- g + wd w; buf <- mu buf + g; update = -lr (g + mu buf) (nesterov) or -lr buf; lr and a zero buf at each
  drop. The same hyperparameters give the same (cached) object, so `make_steps` compiles once per process for
  repeated runs of one config.
  """
  return _sgd(
    float(config.learning_rate),
    float(config.lr_decay),
    drop_steps(config, steps_per_epoch),
    float(config.momentum),
    bool(config.nesterov),
    float(config.weight_decay),
    bool(config.skip_nonfinite),
  )


@functools.lru_cache(maxsize=8)
def _sgd(
  lr: float,
  decay: float,
  drops: tuple[int, ...],
  momentum: float,
  nesterov: bool,
  wd: float,
  skip_nonfinite: bool,
) -> optax.GradientTransformation:
  schedule = optax.piecewise_constant_schedule(lr, dict.fromkeys(drops, decay))
  tx = optax.chain(
    optax.add_decayed_weights(wd),
    optimizers.reset_at(optax.trace(decay=momentum, nesterov=nesterov), drops),
    optax.scale_by_learning_rate(schedule),
  )
  return step_lib.optimizer(tx, skip_nonfinite)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy -log softmax(logits)[label], in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_steps(graphdef: Any, tx: optax.GradientTransformation, skip_nonfinite: bool, state: dict):
  """Return jitted ``(train_step, eval_step)`` for ``state``'s mesh and shardings.

  ``train_step(state, batch, key) -> (state, metrics)`` is the shared step; ``state`` = {params,
  batch_stats, opt_state, step} replicated over the mesh. ``eval_step(params, batch_stats, batch, mask) ->
  (sums, records)`` returns mask-weighted sums and the sparsity records over the global batch.
  """
  leaves, treedef = jax.tree.flatten(parallel.shardings(state))
  return _make_steps(graphdef, tx, skip_nonfinite, tuple(leaves), treedef)


@functools.lru_cache(maxsize=8)
def _make_steps(
  graphdef: Any, tx: optax.GradientTransformation, skip_nonfinite: bool, leaves, treedef
):
  # Cached (hashable arguments): runs of one config on one mesh compile once per process.
  shardings = jax.tree.unflatten(treedef, leaves)

  def loss_fn(params, state, batch, key):
    # The pixel work on the device: the host only gathers raw uint8 images (augment.py).
    batch = augment.on_device(batch)
    model = nnx.merge(graphdef, params, state["batch_stats"], copy=True)
    logits, _ = nnx.capture(model, nnx.Intermediate)(batch["image"], train=True, key=key)
    loss = jnp.mean(cross_entropy(logits, batch["label"]))
    error = 100.0 * jnp.mean((jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32))
    # The statistics of the global batch: XLA all-reduces the moments over the mesh.
    return loss, ({"error": error}, {"batch_stats": nnx.state(model, nnx.BatchStat)})

  train_step = step_lib.make_train_step(loss_fn, tx, skip_nonfinite=skip_nonfinite)

  def eval_step(params, batch_stats, batch, mask):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits, records = nnx.capture(model, nnx.Intermediate)(batch["image"], train=False)
    wrong = (jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32)
    sums = {
      "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
      "error": jnp.sum(wrong * mask),
      "count": jnp.sum(mask),
    }
    return sums, evaluation.record_sums(records, mask)

  return step_lib.jit_train_step(train_step, shardings), jax.jit(eval_step)


def evaluate(
  eval_step,
  state: dict,
  ds: input_pipeline.ArrayDataset,
  global_batch: int,
  mesh: jax.sharding.Mesh,
) -> dict[str, float]:
  """Test loss, error (%) and sparsity records over every example of ``ds`` (each process its slice)."""
  sums, records = evaluation.eval_sums(
    lambda batch, mask: eval_step(state["params"], state["batch_stats"], batch, mask),
    {"image": ds.images, "label": ds.labels},
    global_batch // jax.process_count(),
    mesh,
    prepare=lambda b: {**b, "image": input_pipeline.normalize(b["image"])},
  )
  n = sums["count"]
  return {"loss": sums["loss"] / n, "error": 100.0 * sums["error"] / n} | evaluation.mean_records(
    records
  )


def init_state(
  config: ml_collections.ConfigDict,
  num_classes: int,
  steps_per_epoch: int,
  mesh: jax.sharding.Mesh | None = None,
):
  """``(graphdef, state, tx)`` for a fresh run: state = {params, batch_stats, opt_state, step}.

  The state is placed on ``mesh`` when one is given (``config.param_sharding``: replicated or FSDP;
  host arrays otherwise).
  """
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
  if mesh is not None:
    state = parallel.put_state(state, mesh, config.param_sharding)
  return graphdef, state, tx


def load_datasets(config: ml_collections.ConfigDict) -> dict[str, input_pipeline.ArrayDataset]:
  """The config's train and test splits."""
  kw = {
    "source": config.data_source,
    "synthetic_size": int(config.synthetic_size),
    "seed": int(config.data_seed),
    "verify": bool(config.verify_data),
  }
  return {
    s: input_pipeline.load(config.dataset, s, config.data_dir or None, **kw)
    for s in ("train", "test")
  }


def run_label(config: ml_collections.ConfigDict) -> str:
  """``'sparseout q=2.5 p=0.3'`` (legends, progress bar)."""
  return labels.regularizer_label(config.regularizer, config.q, config.rate)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  datasets: dict[str, input_pipeline.ArrayDataset] | None = None,
) -> dict[str, Any]:
  """Train the config's WRN, evaluating every epoch; resume from ``workdir`` if it has a checkpoint.

  Args:
    config: see ``configs/wrn28_10_cifar10.py``.
    workdir: output folder (checkpoints/, metrics.jsonl, tensorboard/, config.json, test_error.png,
      sparsity.png).
    datasets: preloaded ``{"train", "test"}`` splits; default: loaded from the config.

  Returns:
    ``{"history": [per-epoch rows], "workdir", "steps", "skipped_steps", "params", "batch_stats"}`` (host
    numpy arrays).
  """
  validate_config(config)
  ds = datasets if datasets is not None else load_datasets(config)
  train_ds, test_ds = ds["train"], ds["test"]
  global_batch = int(config.batch_size)
  steps_per_epoch = input_pipeline.train_steps_per_epoch(len(train_ds), global_batch)
  mesh = parallel.make_mesh(int(config.num_devices))
  graphdef, state, tx = init_state(config, train_ds.num_classes, steps_per_epoch, mesh)
  train_step, eval_step = make_steps(graphdef, tx, bool(config.skip_nonfinite), state)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  key = parallel.replicate_key(jax.random.key(int(config.seed)), mesh)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=1))

  def batches(epoch: int, start: int):
    for batch in augment.raw_train_batches(
      train_ds,
      global_batch=global_batch,
      seed=int(config.data_seed),
      epoch=epoch,
      host_id=jax.process_index(),
      num_hosts=jax.process_count(),
      start_batch=start,
      flip=bool(config.flip),
      crop=bool(config.crop),
    ):
      yield parallel.put_batch(batch, mesh)

  def evaluate_epoch(state, info: loop.EpochInfo) -> dict[str, float]:
    test = evaluate(eval_step, state, test_ds, int(config.eval_batch_size), mesh)
    return {f"eval/{k}": v for k, v in test.items()} | {
      "epoch/lr": float(schedule(info.step - 1)),
      "epoch/images_per_s": info.steps * global_batch / max(info.seconds, 1e-9),
    }

  program = loop.Program(
    module="train.wrn.main",
    label=f"WRN-{config.depth}-{config.width} {config.dataset} {run_label(config)}",
    num_epochs=int(config.num_epochs),
    steps_in_epoch=lambda epoch: steps_per_epoch,
    batches=batches,
    train_step=lambda state, batch: train_step(state, batch, key),
    evaluate=evaluate_epoch,
    best_metric="eval/error",
  )
  out = loop.run(program, config, workdir, state)
  if jax.process_index() == 0 and out.history:
    real_wrn28_10 = config.data_source != "synthetic" and (config.depth, config.width) == (28, 10)
    reference = REFERENCE_ERROR[config.dataset] if real_wrn28_10 else None
    plot_curves(out.history, os.path.join(workdir, "test_error.png"), run_label(config), reference)
  host = parallel.to_host({k: out.state[k] for k in ("params", "batch_stats")})
  return {
    "history": out.history,
    "workdir": os.path.abspath(workdir),
    "steps": out.steps,
    "skipped_steps": out.skipped_steps,
    "params": host["params"],
    "batch_stats": host["batch_stats"],
  }


def plot_curves(
  history: list[dict[str, Any]], path: str, label: str, reference: float | None = None
) -> str:
  """PNG of test (and noisy train) error in % per epoch, with the reference error as a flat line if given.

  An epoch whose steps were all skipped (``skip_nonfinite``) has no train error: a gap in that curve.
  """
  epochs = [r["epoch"] for r in history]
  series = {
    f"test {label}": (epochs, [r["eval/error"] for r in history]),
    f"train (noisy) {label}": (
      epochs,
      [r.get("epoch/train_error", float("nan")) for r in history],
    ),
  }
  if reference is not None:
    series[f"WRN-28-10 dropout reference {reference}%"] = ([epochs[0], epochs[-1]], [reference] * 2)
  return plots.save_panels(
    [plots.Panel(series, xlabel="epoch", ylabel="error (%)", title="WRN error")], path
  )
