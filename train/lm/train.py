"""AWD-LSTM language-model training with Sparseout (paper 4.4): the shared loop with this program's pieces.

One jitted step over the device mesh (:mod:`train.common.step`): the B streams are split over the devices
(the noise masks drawn for all of them at once, each device making its streams' bits), the gradients of the
global batch are clipped to global norm ``clip``, weight decay is added and SGD applies ``lr * length / bptt`` (AWD-LSTM's scaling for variable windows). The state is one pytree: params,
optimizer state, step, the hidden state carried from window to window without gradient (reset at each epoch's
start; split over the devices with its streams), and NT-ASGD's averaged parameters with their count and on/off flag, so one compiled step serves SGD and
averaged SGD. ``optimizer="ntasgd"`` switches to averaging when validation stops improving (AWD-LSTM's
``main.py``); ``finetune_epochs`` then continues from the best checkpoint with averaged SGD from the first step
until validation stops improving (AWD-LSTM's ``finetune.py``). At the end the best checkpoint is tested.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from models import lstm_lm
from models.params import param_count
from train.common import errors, evaluation, loop, optimizers, parallel, plots, run_control
from train.common import results as results_lib
from train.common import step as step_lib
from train.lm import input_pipeline as ip

PyTree = Any
SITES = "eihow"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OPTIMIZERS = ("sgd", "ntasgd")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Check the config's values once, where they enter; raise ConfigError naming the field."""
  run_control.validate_run_control(config)  # before the state is placed (param_sharding)
  if config.compute_dtype not in DTYPES:
    raise errors.ConfigError(
      f"config.compute_dtype must be one of {tuple(DTYPES)}, got {config.compute_dtype!r}"
    )
  if config.optimizer not in OPTIMIZERS:
    raise errors.ConfigError(
      f"config.optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}"
    )
  if not config.data_dir:
    raise errors.ConfigError(
      "config.data_dir must name the folder with the corpus files, e.g. "
      "--config.data_dir=../shared/data/ptb (add --config.download=True to fetch them there)"
    )
  for name in ("batch_size", "bptt", "num_epochs", "eval_batch_size", "test_batch_size", "nonmono"):
    if int(config[name]) <= 0:
      raise errors.ConfigError(f"config.{name} must be positive, got {config[name]}")
  if int(config.finetune_epochs) < 0:
    raise errors.ConfigError(f"config.finetune_epochs must be >= 0, got {config.finetune_epochs}")
  n = int(config.num_devices) or jax.device_count()
  if config.batch_size % n:
    raise errors.ConfigError(
      f"config.batch_size ({config.batch_size}) must be divisible by the {n} devices"
    )


def regularisation_from_config(config: ml_collections.ConfigDict) -> lstm_lm.Regularisation:
  """The model's rates and norms: ``q_<site>`` if set, else the global ``q`` (the weight drop: ``q_w``).

  Args:
    config: needs ``rate_e .. rate_w``, ``q``, ``q_w``, optional ``q_e .. q_o`` (None = use ``q``), ``impl``.

  Returns:
    The validated regularisation.
  """
  kw = {}
  for s in SITES:
    kw[f"rate_{s}"] = float(config[f"rate_{s}"])
    q_site = config.get(f"q_{s}")
    kw[f"q_{s}"] = float(config.q if q_site is None else q_site)
  return lstm_lm.Regularisation(**kw, impl=config.impl, gradient=config.gradient)


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> lstm_lm.LSTMLM:
  """Initialise the LM from the config (params float32; ``compute_dtype`` for the matmuls)."""
  return lstm_lm.LSTMLM(
    vocab_size,
    config.emb_size,
    config.hidden_size,
    config.num_layers,
    regularisation_from_config(config),
    compute_dtype=DTYPES[config.compute_dtype],
    backend=config.backend,
    record_sparsity=bool(config.record_sparsity),
    rngs=nnx.Rngs(params=config.seed),
  )


def scale_by_window(bptt: float) -> optax.GradientTransformationExtraArgs:
  """Multiply the updates by ``length / bptt`` (AWD-LSTM's lr scaling for a window of ``length`` steps).

  ``length`` is an extra argument of ``update`` (the batch's real steps).
  """

  def update(updates, state, params=None, *, length, **extra_args):
    scale = length.astype(jnp.float32) / bptt
    return jax.tree.map(lambda u: u * scale, updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clip, weight decay, SGD at the base lr, ``lr * length / bptt``, NT-ASGD's average.

  PyTorch SGD's order; AWD's ASGD makes the same update and keeps the mean of the iterates once
  switched on (:func:`train.common.optimizers.average_iterates`).
  """
  tx = optimizers.average_iterates(
    optax.chain(
      optax.clip_by_global_norm(config.clip),
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(config.learning_rate),
      scale_by_window(float(config.bptt)),
    )
  )
  return step_lib.optimizer(tx, bool(config.skip_nonfinite))


def init_state(
  config: ml_collections.ConfigDict, vocab_size: int, mesh: jax.sharding.Mesh | None = None
):
  """``(graphdef, state, tx)`` for a fresh run; ``state["carry"]`` is the global ``(B, H)`` hidden state.

  With a ``mesh`` the state is placed on it (:func:`place`; host arrays otherwise).
  """
  model = build_model(config, vocab_size)
  graphdef, params = nnx.split(model)
  tx = make_optimizer(config)
  state = {
    "params": params,
    "opt_state": tx.init(params),
    "step": jnp.zeros((), jnp.int32),
    "carry": jax.tree.map(np.asarray, model.init_carry(config.batch_size)),
  }
  if mesh is not None:
    state = place(state, mesh, config.param_sharding)
  return graphdef, state, tx


def place(state: PyTree, mesh: jax.sharding.Mesh, param_sharding: str = "replicated") -> PyTree:
  """A host state on ``mesh``: replicated or FSDP (:func:`train.common.parallel.put_state`), the
  carry ``(B, H)`` split by stream."""
  rest = parallel.put_state({k: v for k, v in state.items() if k != "carry"}, mesh, param_sharding)
  return rest | {"carry": parallel.put_sharded(state["carry"], mesh)}


def make_train_step(
  graphdef: Any, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, state: PyTree
):
  """The jitted step ``(state, batch, key) -> (state, metrics)`` for ``state``'s shardings.

  ``batch`` = {"x", "y": ``(T, B)`` token ids (the streams split over the mesh), "length": the real steps}.
  """
  alpha, beta = float(config.alpha), float(config.beta)
  tokens = float(config.batch_size)

  def loss_fn(params, state, batch, key):
    x, y, length = batch["x"], batch["y"], batch["length"]
    weights = jnp.broadcast_to((jnp.arange(x.shape[0]) < length)[:, None], x.shape)
    weights = weights.astype(jnp.float32)
    model = nnx.merge(graphdef, params)
    (logits, carry, aux), _ = nnx.capture(model, nnx.Intermediate)(
      x, state["carry"], key=key, length=length
    )
    losses = lstm_lm.lm_losses(logits, y, weights, aux["raw"], aux["dropped"], alpha, beta)
    metrics = {k: losses[k] for k in ("nll", "ar", "tar")} | {"weight": length * tokens}
    return losses["loss"], (metrics, {"carry": jax.lax.stop_gradient(carry)})

  step = step_lib.make_train_step(
    loss_fn,
    tx,
    skip_nonfinite=bool(config.skip_nonfinite),
    update_args=lambda batch: {"length": batch["length"]},
    grad_norm=True,
  )
  return step_lib.jit_train_step(step, parallel.shardings(state))


def make_eval_step(graphdef: Any):
  """Jitted evaluation window: ``(params, carry, (x, y, w)) -> ((sums, records), carry)``.

  ``sums`` = {"nll": sum of w * nll, "tokens": sum of w}; ``records`` are the window's per-site
  sparsity records (:func:`train.common.evaluation.record_sums`: weighted by its real tokens, 0 for a
  padded window).
  """

  @jax.jit
  def step(params, carry, window):
    x, y, w = window
    model = nnx.merge(graphdef, params)
    (logits, new_carry, _), captured = nnx.capture(model, nnx.Intermediate)(x, carry)
    logz = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    sums = {"nll": ((logz - tgt) * w).sum(), "tokens": w.sum()}
    return (sums, evaluation.record_sums(captured, w)), new_carry

  return step


def evaluate(
  graphdef: Any, params: PyTree, data: np.ndarray, batch_size: int, bptt: int, eval_step=None
) -> dict[str, float]:
  """Perplexity of ``data`` with fixed windows, every target token counted once; per-site sparsity records.

  The windows run in stream order with the hidden state carried from each to the next
  (:func:`train.common.evaluation.carried_sums`); ``loss`` = sum(w * nll) / sum(w) over every window.

  Args:
    graphdef: the model's graph definition.
    params: the parameters (host arrays, or arrays on this process's devices).
    data: 1-D token ids.
    batch_size: parallel streams (10 valid, 1 test in AWD-LSTM).
    bptt: window length.
    eval_step: a cached :func:`make_eval_step` (built if None).

  Returns:
    ``{"loss": mean nll, "ppl": exp(loss), "tokens": count, "sparsity/<site>/<stat>": ...}``.
  """
  eval_step = eval_step or make_eval_step(graphdef)
  sums, records = evaluation.carried_sums(
    lambda carry, window: eval_step(params, carry, window),
    ((b.inputs, b.targets, b.weights) for b in ip.eval_batches(data, batch_size, bptt)),
    nnx.merge(graphdef, params).init_carry(batch_size),
  )
  loss = float(sums["nll"]) / float(sums["tokens"])
  out = {"loss": loss, "ppl": perplexity(loss), "tokens": int(sums["tokens"])}
  return out | evaluation.mean_records(records)


def _load_data(config: ml_collections.ConfigDict) -> ip.Corpus:
  corpus = ip.load_corpus(
    config.dataset, config.data_dir, allow_download=config.download, verify=config.verify_data
  )
  cut = lambda a, n: a[:n] if n else a  # noqa: E731
  return ip.Corpus(
    vocab=corpus.vocab,
    train=cut(corpus.train, config.max_train_tokens),
    valid=cut(corpus.valid, config.max_eval_tokens),
    test=cut(corpus.test, config.max_eval_tokens),
  )


def perplexity(loss: float) -> float:
  """``exp(loss)``; inf with a warning when that overflows or the loss is not finite (never an exception).

  Example:
    >>> round(perplexity(1.0), 4)
    2.7183
  """
  if math.isfinite(loss) and loss < 709.0:  # exp(709.8) overflows float64
    return math.exp(loss)
  warnings.warn(f"loss {loss} gives no finite perplexity; reported as inf", stacklevel=2)
  return math.inf


def nonmonotone(losses: list[float], nonmono: int) -> bool:
  """AWD-LSTM's trigger: the newest validation loss is worse than the best of those before the last ``nonmono``.

  Example:
    >>> nonmonotone([4.0, 5.0, 4.5, 4.6], nonmono=2)
    True
    >>> nonmonotone([5.0, 4.0, 3.9], nonmono=2)
    False
  """
  *before, last = losses
  return len(before) > nonmono and last > min(before[:-nonmono])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train, validate each epoch, keep the best checkpoint, optionally finetune, test the best one at the end.

  Args:
    config: an ``ml_collections.ConfigDict`` as in ``train/lm/configs/``.
    workdir: output folder: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``sparsity.png``,
      ``valid_curve.png``, ``results.json``; the finetune stage in ``finetune/`` (same files). A run
      restarted with the same workdir resumes.

  Returns:
    ``{"history", "workdir", "steps", "skipped_steps", "final"}``; ``final`` holds the best checkpoint's
    valid and test perplexity, its epoch, the stage it came from and the mean tokens/s.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(int(config.num_devices))
  corpus = _load_data(config)
  graphdef, host_state, tx = init_state(config, len(corpus.vocab))
  state = place(host_state, mesh, config.param_sharding)
  train_step = make_train_step(graphdef, tx, config, state)
  eval_step = make_eval_step(graphdef)
  streams = ip.batchify(corpus.train, config.batch_size)
  host_streams = ip.shard_for_process(streams, jax.process_index(), jax.process_count())
  root_key = jax.random.key(config.seed)

  def run_stage(stage: int, stage_dir: str, num_epochs: int, init: PyTree) -> loop.Result:
    """One training stage (0: SGD / NT-ASGD; 1: the averaged-SGD finetune) through the shared loop."""
    key = parallel.replicate_key(jax.random.fold_in(root_key, stage), mesh)

    @functools.lru_cache(maxsize=2)
    def schedule(epoch: int) -> list[tuple[int, int]]:
      # Stage 0 keeps the windows of 1-based epochs (seed, 1), (seed, 2), ...; the finetune draws its own.
      sched = ip.train_windows(
        streams, config.bptt, config.seed + 1000 * stage, epoch + 1, config.variable_bptt
      )
      return sched[: config.max_steps_per_epoch or None]

    def batches(epoch: int, start: int):
      for begin, length in schedule(epoch)[start:]:
        window = ip.make_window(host_streams, begin, length, config.bptt_bucket)
        xy = parallel.put_batch({"x": window.inputs, "y": window.targets}, mesh, axis=1)
        yield xy | {"length": parallel.put_replicated(np.int32(window.length), mesh)}

    def start_epoch(state, epoch: int):
      # AWD resets the hidden state at each epoch's start.
      return state | {"carry": parallel.put_sharded(host_state["carry"], mesh)}

    def evaluate_epoch(state, info: loop.EpochInfo) -> dict[str, float]:
      params, asgd = averaged(state)
      valid = evaluate(
        graphdef, params, corpus.valid, config.eval_batch_size, config.bptt, eval_step
      )
      tokens = sum(length for _, length in schedule(info.epoch - 1)) * config.batch_size
      return {f"eval/{k}": v for k, v in valid.items()} | {
        "epoch/tokens_per_s": tokens / info.seconds if info.steps else float("nan"),
        "epoch/asgd": int(asgd),
      }

    def end_epoch(state, row, history):
      losses = [r["eval/loss"] for r in history if r["epoch"] > 0]
      if not nonmonotone(losses, config.nonmono):
        return state, False
      if stage == 1:  # finetune.py: "Done!" once validation stops improving
        return state, True
      if config.optimizer == "ntasgd" and not bool(
        parallel.to_host(average_state(state["opt_state"]).on)
      ):
        if jax.process_index() == 0:
          print(f"epoch {row['epoch']}: switching to ASGD (averaged parameters)", flush=True)
        return start_averaging(state, state["params"]), False
      return state, False

    program = loop.Program(
      module="train.lm.main",
      label=f"{config.dataset} {config.impl} q={config.q:g}" + (" finetune" if stage else ""),
      num_epochs=num_epochs,
      steps_in_epoch=lambda epoch: len(schedule(epoch)),
      batches=batches,
      train_step=lambda state, batch: train_step(state, batch, key),
      evaluate=evaluate_epoch,
      best_metric="eval/ppl",
      # The finetune's starting point competes for best, as finetune.py saves only improvements on it.
      evaluate_untrained=stage == 1,
      checkpoint_untrained=stage == 1,
      start_epoch=start_epoch,
      end_epoch=end_epoch,
    )
    return loop.run(program, config, stage_dir, init)

  def start_averaging(state, params):
    # The average starts from ``params`` (a copy: it must not alias the donated params).
    return state | {"params": params, "opt_state": _map_average(state["opt_state"], params)}

  def best(stage_dir: str) -> tuple[PyTree, dict]:
    # A fresh template: the stage's own state was donated to its steps.
    return loop.restore(
      stage_dir, place(host_state, mesh, config.param_sharding), best=True, best_metric="eval/ppl"
    )

  out = run_stage(0, workdir, int(config.num_epochs), state)
  final_dir, final, stage = workdir, out, 0
  if out.finished and int(config.finetune_epochs) > 0:
    restored, _ = best(workdir)
    params = evaluated_params(restored)
    final_dir, stage = os.path.join(workdir, "finetune"), 1
    start = start_averaging(place(host_state, mesh, config.param_sharding), params)
    final = run_stage(1, final_dir, int(config.finetune_epochs), start)
  summary = {
    "history": final.history,
    "workdir": os.path.abspath(workdir),
    "steps": final.steps,
    "skipped_steps": final.skipped_steps,
    "final": {},
  }
  # A stage stopped by max_steps is resumed by running again; only a finished run is tested.
  if not (final.finished or stage == 1):
    return summary
  restored, best_meta = best(final_dir)
  params, _ = averaged(restored)
  valid = evaluate(graphdef, params, corpus.valid, config.eval_batch_size, config.bptt, eval_step)
  test = evaluate(graphdef, params, corpus.test, config.test_batch_size, config.bptt, eval_step)
  hist = final.history
  summary["final"] = {
    "stage": stage,
    "best_epoch": best_meta["epoch"],
    "epochs": len(hist),
    "valid_ppl": valid["ppl"],
    "test_ppl": test["ppl"],
    "test_loss": test["loss"],
    "valid_tokens": valid["tokens"],
    "test_tokens": test["tokens"],
    "tokens_per_s_mean": float(np.nanmean([h["epoch/tokens_per_s"] for h in hist]))
    if hist
    else float("nan"),
    "steps": final.steps,
    "params": param_count(host_state["params"]),
  }
  write_results(config, final_dir, summary["final"], hist)
  return summary


def average_state(opt_state: PyTree) -> optimizers.AverageState:
  """NT-ASGD's state inside the optimizer state (under ``apply_if_finite`` when skipping)."""
  return step_lib.inner_opt_state(opt_state)


def _map_average(opt_state: PyTree, params: PyTree) -> PyTree:
  """The optimizer state with averaging switched on from ``params``."""
  on = optimizers.start_averaging(average_state(opt_state), params)
  return step_lib.wrap_opt_state(opt_state, on, None)


def evaluated_params(state: PyTree) -> PyTree:
  """The parameters to evaluate (device arrays): NT-ASGD's average once it is on, else the iterate."""
  avg = average_state(state["opt_state"])
  return avg.avg if bool(parallel.to_host(avg.on)) else state["params"]


def averaged(state: PyTree) -> tuple[PyTree, bool]:
  """The parameters to evaluate as host arrays, and whether NT-ASGD's averaging is on."""
  avg = average_state(state["opt_state"])
  on = bool(parallel.to_host(avg.on))
  return parallel.to_host(avg.avg if on else state["params"]), on


def write_results(
  config: ml_collections.ConfigDict, workdir: str, results: dict, hist: list[dict]
) -> None:
  """``test/*`` row in metrics.jsonl and ``results.json`` (:mod:`train.common.results`), ``valid_curve.png``."""
  last_epoch = hist[-1]["epoch"] if hist else 0
  row = {"epoch": last_epoch} | {
    f"test/{k[5:] if k.startswith('test_') else k}": results[k]
    for k in ("test_ppl", "test_loss", "valid_ppl", "best_epoch")
  }
  results_lib.write(workdir, results["steps"], row, results, config, hist)
  if jax.process_index() != 0:
    return
  if hist:
    trained = [h for h in hist if "epoch/train_nll" in h]  # not the finetune's starting point
    plots.line_plot(
      {
        "valid": ([h["epoch"] for h in hist], [h["eval/ppl"] for h in hist]),
        "train": (
          [h["epoch"] for h in trained],
          [math.exp(min(h["epoch/train_nll"], 50.0)) for h in trained],
        ),
      },
      os.path.join(workdir, "valid_curve.png"),
      xlabel="epoch",
      ylabel="perplexity",
      title=f"{config.dataset} q={config.q} impl={config.impl}",
      logy=True,
    )
