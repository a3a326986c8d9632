"""Single-device train steps of the WRN and the AWD-LSTM built from ``models/`` alone (jax, flax, optax).

The memory table and the GPU suite time and measure these, not the training programs' pmapped steps,
so that they run on a bare machine without ml_collections, tqdm or the programs' I/O. Each step is the
programs' arithmetic: forward with noise, loss, backward, SGD update (WRN: nesterov momentum and L2
weight decay, BN statistics updated; LSTM: AR/TAR, gradient clipping, SGD), with the state donated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from models import lstm_lm
from models.wrn import WideResNet

NOISES = ("none", "dropout", "sparseout")
# The WRN also times Sparseout with the block's noise recomputed in the backward (remat_noise).
WRN_NOISES = (*NOISES, "sparseout_remat", "sparseout_keep")


@dataclasses.dataclass(frozen=True)
class StepProgram:
  """A train step ready to lower: ``step(state, batch, key) -> (state, loss)``, state donated.

  Attributes:
    step: the jitted step.
    abstract_args: ShapeDtypeStructs of (state, batch, key), for ``step.lower(*abstract_args)``.
    init: makes concrete (state, batch, key) on the default device.
    units: images (WRN) or tokens (LSTM) per step.
    noised: elements of the tensors the noise layers act on in one step (0 without noise).
  """

  step: Any
  abstract_args: tuple
  init: Callable[[], tuple]
  units: int
  noised: int


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def wrn_program(
  noise: str,
  dtype: str,
  *,
  depth: int = 28,
  width: int = 10,
  batch: int = 128,
  rate: float = 0.3,
  q: float = 1.5,
) -> StepProgram:
  """WRN-depth-width train step on (batch, 32, 32, 3) images: CE loss, nesterov SGD, weight decay.

  Args:
    noise: "none", "dropout", "sparseout" (in every block, after the second ReLU) or
      "sparseout_remat" (the same, ``remat_noise=True``), "sparseout_keep" (``remat_output=False``)
      or "sparseout_policy" (``remat_output=True``); plain "sparseout" takes the platform's default.
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    depth, width: the WRN's size.
    batch: images per step.
    rate, q: drop probability and Sparseout norm.

  Returns:
    The StepProgram; ``noised`` = sum over blocks of batch x H x W x channels of the noised activation.
  """

  def make():
    return WideResNet(
      depth,
      width,
      10,
      regularizer=noise.split("_")[0],
      rate=rate,
      q=q,
      dtype=jnp.dtype(dtype),
      remat_noise=noise.endswith("_remat"),
      # "_keep" / "_policy": Sparseout's output kept / recomputed; else the platform's default.
      remat_output={"_keep": False, "_policy": True}.get(noise[noise.rfind("_") :]),
      rngs=nnx.Rngs(0),
    )

  abstract_model = nnx.eval_shape(make)
  graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True))

  def step(state, batch, key):
    def loss_fn(p):
      model = nnx.merge(graphdef, p, state["rest"], copy=True)
      logits = model(batch["image"], train=True, key=key)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, nnx.split(model, nnx.Param, ...)[2]  # BN statistics after this batch

    (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates), "rest": new_rest}
    return {**new, "opt_state": opt_state}, loss

  def init():
    _, p, r = nnx.split(make(), nnx.Param, ...)
    images = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3), jnp.float32)
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    state = {"params": p, "rest": r, "opt_state": tx.init(p)}
    return state, {"image": images, "label": labels}, jax.random.key(3)

  abstract_state = {
    "params": _abstract(params),
    "rest": _abstract(rest),
    "opt_state": _abstract(jax.eval_shape(tx.init, params)),
  }
  abstract_batch = {
    "image": jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32),
    "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
  }
  noised, side = 0, 32
  for block in abstract_model.blocks:
    side //= block.conv0.strides[0]
    noised += batch * side * side * block.conv0.out_features
  return StepProgram(
    jax.jit(step, donate_argnums=0),
    (abstract_state, abstract_batch, jax.eval_shape(lambda: jax.random.key(0))),
    init,
    batch,
    noised if noise != "none" else 0,
  )


def lstm_regularisation(noise: str, q: float = 1.5) -> lstm_lm.Regularisation:
  """AWD-LSTM's PTB rates with Sparseout (norm q at every site), Flax dropout, or no noise."""
  if noise == "none":
    return lstm_lm.Regularisation.off()
  if noise == "dropout":
    return lstm_lm.Regularisation(impl="dropout")
  if noise == "sparseout":
    return lstm_lm.Regularisation(**{f"q_{s}": q for s in "eihow"}, impl="sparseout")
  raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")


def lstm_program(
  noise: str,
  dtype: str,
  *,
  vocab: int = 10000,
  emb: int = 400,
  hidden: int = 1150,
  layers: int = 3,
  batch: int = 20,
  bptt: int = 70,
  backend: str = "scan",
  q: float = 1.5,
) -> StepProgram:
  """AWD-LSTM train step on a (bptt, batch) window: CE + AR + TAR, clip 0.25, SGD lr 30.

  Args:
    noise: "none", "dropout" or "sparseout" (AWD-LSTM's five noise sites at the PTB rates).
    dtype: matmul compute dtype, "float32" or "bfloat16" (the cuDNN backend: float32 only).
    vocab, emb, hidden, layers: the model's size (defaults: ptb_awd).
    batch, bptt: streams and steps of a window.
    backend: "scan" or "cudnn".
    q: Sparseout norm of every site.

  Returns:
    The StepProgram; ``units`` = tokens per step; ``noised`` = elements of every noised tensor (the
    looked-up embeddings, the locked-noise inputs and outputs, the hidden-to-hidden matrices).
  """
  reg = lstm_regularisation(noise, q)

  def make():
    return lstm_lm.LSTMLM(
      vocab,
      emb,
      hidden,
      layers,
      reg,
      compute_dtype=jnp.dtype(dtype),
      backend=backend,
      rngs=nnx.Rngs(0),
    )

  abstract_model = nnx.eval_shape(make)
  graphdef, params = nnx.split(abstract_model)
  tx = optax.chain(
    optax.clip_by_global_norm(0.25), optax.add_decayed_weights(1.2e-6), optax.sgd(30.0)
  )
  sizes = abstract_model.sizes

  def step(state, batch, key):
    x, y = batch["x"], batch["y"]
    weights = jnp.ones(x.shape, jnp.float32)

    def loss_fn(p):
      model = nnx.merge(graphdef, p)
      logits, carry, aux = model(x, state["carry"], key=key)
      loss = lstm_lm.lm_losses(logits, y, weights, aux["raw"], aux["dropped"])["loss"]
      return loss, carry

    (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    carry = jax.lax.stop_gradient(carry)
    return {"params": params, "opt_state": opt_state, "carry": carry}, loss

  def init():
    model = make()
    _, p = nnx.split(model)
    state = {"params": p, "opt_state": tx.init(p), "carry": model.init_carry(batch)}
    ids = jax.random.randint(jax.random.key(1), (bptt + 1, batch), 0, vocab)
    return state, {"x": ids[:-1], "y": ids[1:]}, jax.random.key(3)

  carry = tuple((jax.ShapeDtypeStruct((batch, h), jnp.float32),) * 2 for h in sizes)
  abstract_state = {
    "params": _abstract(params),
    "opt_state": _abstract(jax.eval_shape(tx.init, params)),
    "carry": carry,
  }
  ids = jax.ShapeDtypeStruct((bptt, batch), jnp.int32)
  tokens = bptt * batch
  noised = 0
  if noise != "none":
    # e (looked-up rows), i, h between layers, o: (T, B, features); w: every hidden-to-hidden matrix.
    noised = tokens * (3 * emb + sum(sizes[:-1])) + sum(4 * h * h for h in sizes)
  return StepProgram(
    jax.jit(step, donate_argnums=0),
    (abstract_state, {"x": ids, "y": ids}, jax.eval_shape(lambda: jax.random.key(0))),
    init,
    tokens,
    noised,
  )


def memory_stats(compiled: Any) -> dict[str, int]:
  """Bytes of a compiled program: temp, argument, output, alias (and peak where the backend says)."""
  m = compiled.memory_analysis()
  out = {
    k: int(getattr(m, f"{k}_size_in_bytes", -1)) for k in ("temp", "argument", "output", "alias")
  }
  out["peak"] = int(getattr(m, "peak_memory_in_bytes", -1) or -1)
  return out
