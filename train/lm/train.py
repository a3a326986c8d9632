"""AWD-LSTM language-model training with Sparseout (paper 4.4): data-parallel pmap, SGD / NT-ASGD.

One global step: every device runs its share of the B streams through the model with its own
noise key (``fold_in(step key, device)``), the gradients are ``pmean``-ed, clipped to global norm
``clip``, weight decay is added and plain SGD applies ``lr * length / bptt`` (AWD-LSTM's scaling
for variable windows). The hidden state is carried from window to window without gradient and
reset at each epoch start. Resume is exact: the window schedule is a function of (seed, epoch),
the step key of (seed, step), and the hidden state is checkpointed with the parameters.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from models import lstm_lm
from train.common import checkpoint as ckpt_lib
from train.common import guard as guard_lib
from train.common import metrics as metrics_lib
from train.common import parallel, plots, preemption, progress
from train.lm import input_pipeline as ip

PyTree = Any
SITES = "eihow"


# ----------------------------------------------------------------------------- set-up


def regularisation_from_config(config: ml_collections.ConfigDict) -> lstm_lm.Regularisation:
  """The model's rates and norms: ``q_<site>`` if set, else the global ``q``.

  Args:
    config: needs ``rate_e .. rate_w``, ``q`` and optional ``q_e .. q_w`` (None = use ``q``), ``impl``.

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
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if config.compute_dtype not in dtypes:
    raise ValueError(f"compute_dtype must be one of {sorted(dtypes)}, got {config.compute_dtype!r}")
  return lstm_lm.LSTMLM(
    vocab_size,
    config.emb_size,
    config.hidden_size,
    config.num_layers,
    regularisation_from_config(config),
    compute_dtype=dtypes[config.compute_dtype],
    backend=config.backend,
    rngs=nnx.Rngs(params=config.seed),
  )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clip, then weight decay, then SGD at the base lr (PyTorch SGD order)."""
  return optax.chain(
    optax.clip_by_global_norm(config.clip),
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(config.learning_rate),
  )


def _first_replica(tree: PyTree) -> PyTree:
  """Device 0's copy of a pmap-replicated tree.

  (flax's ``jax_utils.unreplicate`` returns the stacked array when pmap ran on a subset of
  the local devices, e.g. ``num_devices=1`` of 8; this works for any device count.)
  """
  return jax.tree.map(lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), tree)


def _time_major_shard(x: np.ndarray, n: int) -> np.ndarray:
  """``(T, B, ...) -> (n, T, B // n, ...)``: each device gets a contiguous block of streams."""
  t, b = x.shape[:2]
  if b % n:
    raise ValueError(f"per-host batch size {b} is not divisible by the {n} local devices")
  return np.swapaxes(x.reshape((t, n, b // n) + x.shape[2:]), 0, 1)


def _carry_shard(carry: PyTree, n: int) -> PyTree:
  """Host carry ``(B, H)`` leaves -> device layout ``(n, B // n, H)``."""
  return jax.tree.map(lambda c: np.asarray(c).reshape((n, c.shape[0] // n) + c.shape[1:]), carry)


def _carry_unshard(carry: PyTree) -> PyTree:
  """Device carry ``(n, b, H)`` -> host ``(n * b, H)`` numpy."""
  return jax.tree.map(lambda c: np.asarray(c).reshape((-1,) + c.shape[2:]), carry)


# ----------------------------------------------------------------------------- steps


def make_train_step(
  graphdef: Any,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  average: bool,
  devices: list[Any] | None = None,
):
  """Build the pmapped train step.

  Args:
    graphdef: the model's graph definition (``nnx.split``).
    tx: the optimizer.
    config: needs ``alpha``, ``beta``, ``bptt``.
    average: also update the NT-ASGD running average of the parameters.
    devices: the pmap devices (default: all local devices).

  Returns:
    ``step(params, opt_state, avg, carry, x, y, length, n_avg, key) -> (params, opt_state, avg,
    carry, metrics)``; array arguments are per-device (leading device axis) except ``length``,
    ``n_avg`` and ``key`` (shared).
  """
  alpha, beta, bptt = float(config.alpha), float(config.beta), float(config.bptt)

  def step(params, opt_state, avg, carry, x, y, length, n_avg, key):
    key = parallel.device_key(key)
    weights = jnp.broadcast_to((jnp.arange(x.shape[0]) < length)[:, None], x.shape).astype(
      jnp.float32
    )

    def loss_fn(p):
      model = nnx.merge(graphdef, p)
      logits, new_carry, aux = model(x, carry, key=key, length=length)
      losses = lstm_lm.lm_losses(logits, y, weights, aux["raw"], aux["dropped"], alpha, beta)
      return losses["loss"], (losses, new_carry)

    (_, (losses, new_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = parallel.pmean(grads)
    losses = parallel.pmean(losses)
    ok = guard_lib.all_finite((losses["loss"], grads))
    updates, opt_state = tx.update(grads, opt_state, params)
    scale = length.astype(jnp.float32) / bptt  # AWD: lr * seq_len / bptt
    updates = jax.tree.map(lambda u: u * scale, updates)
    params = optax.apply_updates(params, updates)
    if average:  # torch ASGD(t0=0, lambd=0): ax = mean of the iterates since the switch
      avg = jax.tree.map(lambda a, p: a + (p - a) / n_avg.astype(a.dtype), avg, params)
    grad_norm = optax.global_norm(grads)
    metrics = dict(losses, grad_norm=grad_norm, ok=ok)
    return params, opt_state, avg, jax.lax.stop_gradient(new_carry), metrics

  return jax.pmap(
    step,
    axis_name=parallel.AXIS,
    in_axes=(0, 0, 0, 0, 0, 0, None, None, None),
    donate_argnums=(0, 1, 2, 3),
    devices=devices,
  )


def make_eval_step(graphdef: Any):
  """Jitted evaluation window: ``(params, carry, x, y, w) -> (sum of w * nll, sum of w, carry)``."""

  @jax.jit
  def step(params, carry, x, y, w):
    model = nnx.merge(graphdef, params)
    logits, new_carry, _ = model(x, carry)
    logz = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    return ((logz - tgt) * w).sum(), w.sum(), new_carry

  return step


def evaluate(
  graphdef: Any, params: PyTree, data: np.ndarray, batch_size: int, bptt: int, eval_step=None
) -> dict[str, float]:
  """Perplexity of ``data`` with fixed windows, every target token counted once.

  Args:
    graphdef: the model's graph definition.
    params: unreplicated parameters.
    data: 1-D token ids.
    batch_size: parallel streams (10 valid, 1 test in AWD-LSTM).
    bptt: window length.
    eval_step: a cached :func:`make_eval_step` (built if None).

  Returns:
    ``{"loss": mean nll, "ppl": exp(loss), "tokens": count}``.
  """
  eval_step = eval_step or make_eval_step(graphdef)
  model = nnx.merge(graphdef, params)
  carry = model.init_carry(batch_size)
  total, count = 0.0, 0.0
  for b in ip.eval_batches(data, batch_size, bptt):
    s, n, carry = eval_step(params, carry, b.inputs, b.targets, b.weights)
    total += float(s)
    count += float(n)
  loss = total / count
  return {"loss": loss, "ppl": math.exp(loss), "tokens": int(count)}


# ----------------------------------------------------------------------------- loop


def _load_data(config: ml_collections.ConfigDict) -> ip.Corpus:
  corpus = ip.load_corpus(config.dataset, config.data_dir, allow_download=config.download)
  cut = lambda a, n: a[:n] if n else a  # noqa: E731
  return ip.Corpus(
    vocab=corpus.vocab,
    train=cut(corpus.train, config.max_train_tokens),
    valid=cut(corpus.valid, config.max_eval_tokens),
    test=cut(corpus.test, config.max_eval_tokens),
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train, validate each epoch, keep the best checkpoint, test it at the end.

  Args:
    config: an ``ml_collections.ConfigDict`` as in ``train/lm/configs/``.
    workdir: output folder: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``,
      ``valid_curve.png``, ``results.json``. A run restarted with the same workdir resumes.

  Returns:
    Final results (best epoch, valid and test perplexity of the best checkpoint, tokens/s).
  """
  os.makedirs(workdir, exist_ok=True)
  devices = jax.local_devices()
  if config.num_devices:
    if jax.process_count() > 1 or config.num_devices > len(devices):
      raise ValueError(
        f"num_devices={config.num_devices} needs one process with at least that many local "
        f"devices (have {len(devices)} in {jax.process_count()} processes)"
      )
    devices = devices[: config.num_devices]
  n_dev = len(devices)
  p_idx, p_cnt = jax.process_index(), jax.process_count()
  is_main = p_idx == 0
  corpus = _load_data(config)
  vocab_size = len(corpus.vocab)

  model = build_model(config, vocab_size)
  graphdef, params = nnx.split(model)
  tx = make_optimizer(config)
  opt_state = tx.init(params)
  avg = params  # NT-ASGD average (unused until the switch)

  streams = ip.batchify(corpus.train, config.batch_size)
  host_streams = ip.shard_for_process(streams, p_idx, p_cnt)
  b_host = host_streams.shape[1]
  if b_host % n_dev:
    raise ValueError(
      f"batch_size {config.batch_size} must be divisible by processes x local devices "
      f"({p_cnt} x {n_dev})"
    )
  zero_carry = jax.tree.map(np.asarray, model.init_carry(config.batch_size))  # global (B, H)

  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep_latest=1, keep_best=1, best_metric="valid_ppl"
  )
  meta: dict[str, Any] = {
    "epoch": 1,
    "window": 0,
    "step": 0,
    "asgd": False,
    "n_avg": 0,
    "val_hist": [],
    "epoch_nll": 0.0,
    "epoch_tokens": 0,
    "epoch_time": 0.0,
    "history": [],
  }
  carry_host = zero_carry
  restored = checkpointer.restore(
    {"params": params, "opt_state": opt_state, "avg": avg, "carry": zero_carry}
  )
  if restored is not None:
    state, meta = restored
    params, opt_state, avg = state["params"], state["opt_state"], state["avg"]
    carry_host = state["carry"]
    if is_main:
      print(
        f"resumed from {checkpointer.path(meta['step'])}: epoch {meta['epoch']}, "
        f"window {meta['window']}, step {meta['step']}",
        flush=True,
      )

  def carry_to_devices(c):
    """Global host carry (B, H) -> this host's streams on its local devices."""
    c = jax.tree.map(lambda a: a[p_idx * b_host : (p_idx + 1) * b_host], c)
    # Placed like parallel.replicate's output (and pmap's), so the step compiles once, not twice.
    mesh = jax.sharding.Mesh(np.array(devices), (parallel.AXIS,))
    sharding = jax.NamedSharding(mesh, jax.P(parallel.AXIS))
    return jax.device_put(_carry_shard(c, n_dev), sharding)

  r_params, r_opt, r_avg = (
    parallel.replicate(params, devices),
    parallel.replicate(opt_state, devices),
    parallel.replicate(avg, devices),
  )
  r_carry = carry_to_devices(carry_host)
  # pmap's `devices` must list every process's devices; pass it only for a single-process subset.
  pmap_devices = devices if config.num_devices else None
  steps = {
    avg_flag: make_train_step(graphdef, tx, config, avg_flag, pmap_devices)
    for avg_flag in (False, True)
  }
  eval_step = make_eval_step(graphdef)
  root_key = jax.random.key(config.seed)
  writer = metrics_lib.MetricsWriter(workdir)
  guard = guard_lib.NonFiniteGuard(skip=False)
  seen_shapes: set[int] = set()

  def global_carry(rc):
    c = _carry_unshard(jax.device_get(rc))
    if p_cnt > 1:
      from jax.experimental import multihost_utils

      c = jax.tree.map(lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), c)
    return c

  def save(step_meta, metrics=None):
    state = {
      "params": _first_replica(r_params),
      "opt_state": _first_replica(r_opt),
      "avg": _first_replica(r_avg),
      "carry": global_carry(r_carry),
    }
    checkpointer.save(step_meta["step"], state, meta=step_meta, metrics=metrics)

  def eval_params():
    return _first_replica(r_avg if meta["asgd"] else r_params)

  start_time = time.time()
  with preemption.PreemptionHandler() as preempt:
    for epoch in range(meta["epoch"], config.num_epochs + 1):
      sched = ip.train_windows(streams, config.bptt, config.seed, epoch, config.variable_bptt)
      if config.max_steps_per_epoch:
        sched = sched[: config.max_steps_per_epoch]
      if meta["window"] == 0:  # AWD-LSTM resets the hidden state every epoch
        r_carry = carry_to_devices(zero_carry)
      bar = progress.progress_bar(
        total=len(sched), initial=meta["window"], desc=f"epoch {epoch}", unit="win"
      )
      for wi in range(meta["window"], len(sched)):
        start, length = sched[wi]
        win = ip.make_window(host_streams, start, length, config.bptt_bucket)
        x = _time_major_shard(win.inputs, n_dev)
        y = _time_major_shard(win.targets, n_dev)
        key = jax.random.fold_in(root_key, meta["step"])
        t0 = time.time()
        meta["n_avg"] += int(meta["asgd"])
        r_params, r_opt, r_avg, r_carry, m = steps[meta["asgd"]](
          r_params,
          r_opt,
          r_avg,
          r_carry,
          x,
          y,
          jnp.int32(length),
          jnp.int32(max(meta["n_avg"], 1)),
          key,
        )
        nll, loss = float(m["nll"][0]), float(m["loss"][0])
        dt = time.time() - t0
        meta["step"] += 1
        guard.check(meta["step"], m["ok"], loss, None)
        shape_key = (win.inputs.shape[0], meta["asgd"])
        tokens = length * config.batch_size
        meta["epoch_nll"] += nll * tokens
        meta["epoch_tokens"] += tokens
        if shape_key in seen_shapes:  # compile steps are left out of the throughput
          meta["epoch_time"] += dt
          meta["timed_tokens"] = meta.get("timed_tokens", 0) + tokens
        seen_shapes.add(shape_key)
        bar.update(1)
        bar.set_postfix(ppl=f"{math.exp(min(nll, 50)):.1f}", refresh=False)
        if config.log_every and meta["step"] % config.log_every == 0:
          writer.write(
            meta["step"],
            {
              "train/loss": loss,
              "train/nll": nll,
              "train/ar": float(m["ar"][0]),
              "train/tar": float(m["tar"][0]),
              "train/grad_norm": float(m["grad_norm"][0]),
            },
          )
        meta["window"] = wi + 1
        stop_now = config.interrupt_at_step and meta["step"] == config.interrupt_at_step
        if preempt.should_stop() or stop_now:
          bar.close()
          save(meta)
          writer.close()
          if stop_now:
            return {"interrupted_at_step": meta["step"]}
          preempt.exit(
            meta["step"],
            checkpointer.path(meta["step"]),
            preemption.resume_command("train.lm.main"),
          )
      bar.close()

      t_eval = time.time()
      valid = evaluate(
        graphdef, eval_params(), corpus.valid, config.eval_batch_size, config.bptt, eval_step
      )
      eval_time = time.time() - t_eval
      tok_s = (
        meta.get("timed_tokens", 0) / meta["epoch_time"] if meta["epoch_time"] > 0 else float("nan")
      )
      row = {
        "epoch": epoch,
        "train_loss": meta["epoch_nll"] / max(meta["epoch_tokens"], 1),
        "valid_loss": valid["loss"],
        "valid_ppl": valid["ppl"],
        "tokens_per_s": tok_s,
        "epoch_train_s": meta["epoch_time"],
        "eval_s": eval_time,
        "elapsed_s": time.time() - start_time,
        "asgd": int(meta["asgd"]),
        "step": meta["step"],
      }
      row["train_ppl"] = math.exp(min(row["train_loss"], 50))
      writer.write(epoch, {f"epoch/{k}": v for k, v in row.items()})
      meta["history"].append(row)
      if is_main:
        print(
          json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
          flush=True,
        )
      # NT-ASGD (AWD-LSTM): switch to averaging once validation stops improving for `nonmono` epochs.
      if (
        config.optimizer == "ntasgd"
        and not meta["asgd"]
        and len(meta["val_hist"]) > config.nonmono
        and valid["loss"] > min(meta["val_hist"][: -config.nonmono])
      ):
        meta["asgd"], meta["n_avg"] = True, 0
        r_avg = r_params
        r_params = jax.tree.map(jnp.copy, r_params)  # r_avg must not alias donated params
        if is_main:
          print(f"epoch {epoch}: switching to ASGD (averaged parameters)", flush=True)
      meta["val_hist"].append(valid["loss"])
      meta.update(
        epoch=epoch + 1, window=0, epoch_nll=0.0, epoch_tokens=0, epoch_time=0.0, timed_tokens=0
      )
      save(meta, {"valid_ppl": valid["ppl"]})

  # Test the best checkpoint.
  best = checkpointer.restore(
    {"params": params, "opt_state": opt_state, "avg": avg, "carry": zero_carry}, best=True
  )
  state, best_meta = best
  best_params = jax.tree.map(jnp.asarray, state["avg"] if best_meta["asgd"] else state["params"])
  valid = evaluate(
    graphdef, best_params, corpus.valid, config.eval_batch_size, config.bptt, eval_step
  )
  test = evaluate(
    graphdef, best_params, corpus.test, config.test_batch_size, config.bptt, eval_step
  )
  hist = meta["history"]
  results = {
    "best_epoch": best_meta["epoch"] - 1,
    "epochs": len(hist),
    "valid_ppl": valid["ppl"],
    "test_ppl": test["ppl"],
    "valid_tokens": valid["tokens"],
    "test_tokens": test["tokens"],
    "tokens_per_s_mean": float(np.nanmean([h["tokens_per_s"] for h in hist]))
    if hist
    else float("nan"),
    "steps": meta["step"],
    "params": lstm_lm.param_count(params),
  }
  writer.write(meta["step"], {f"final/{k}": v for k, v in results.items()})
  writer.close()
  checkpointer.close()
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(dict(results, config=config.to_dict(), history=hist), f, indent=1, default=str)
    if hist:
      ep = [h["epoch"] for h in hist]
      plots.line_plot(
        {
          "valid": (ep, [h["valid_ppl"] for h in hist]),
          "train": (ep, [h["train_ppl"] for h in hist]),
        },
        os.path.join(workdir, "valid_curve.png"),
        xlabel="epoch",
        ylabel="perplexity",
        title=f"{config.dataset} q={config.q} impl={config.impl}",
        logy=True,
      )
    print(json.dumps({k: v for k, v in results.items()}), flush=True)
  return results
