"""AWD-style LSTM language model with Sparseout in place of every dropout (paper 4.4).

Layout is time-major: token ids ``(T, B)``, activations ``(T, B, F)``. Regularisers, each with
its own drop rate and norm ``q`` (``q = 2`` everywhere is AWD-LSTM's dropout exactly):

- ``e``: embedding sparseout, one mask per word type (vocabulary row) per forward pass;
- ``i``/``h``/``o``: locked sparseout on the embedding output, between LSTM layers and on the
  last layer's output, one mask per (stream, feature) shared over time (``broadcast_dims=(0,)``);
- ``w``: weight sparseout (DropConnect) on every hidden-to-hidden matrix, one mask per pass.

Fast recurrence: a layer's input-to-hidden products for all steps are one matmul; only
``h @ W_hh`` sits inside ``lax.scan``. ``backend="cudnn"`` runs each layer through
``jax.experimental.rnn.lstm`` (GPU only) with the weight mask applied to the packed weights
before the call, so the locked masks still sit between layers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

import sparseout_jax

Carry = tuple[tuple[jax.Array, jax.Array], ...]

# Fixed fold_in ids of the noise sites, so both ``impl``s draw the same masks from one key.
_SITE_E, _SITE_I, _SITE_O, _SITE_H, _SITE_W = 0, 1, 2, 100, 200


@dataclasses.dataclass(frozen=True)
class Regularisation:
  """Drop rates and norms of the five noise sites, validated once here.

  Attributes:
    rate_e, q_e: embedding (word-type) sparseout.
    rate_i, q_i: locked sparseout on the embedding output.
    rate_h, q_h: locked sparseout between LSTM layers.
    rate_o, q_o: locked sparseout on the last LSTM output.
    rate_w, q_w: weight sparseout on hidden-to-hidden matrices.
    impl: ``"sparseout"`` (the library) or ``"dropout"`` (Flax ``nnx.Dropout``; q ignored), the
      reference the q = 2 model must equal bit for bit.
    gradient: the library's backward rule, ``"exact"`` or ``"reference"``.
  """

  rate_e: float = 0.1
  q_e: float = 2.0
  rate_i: float = 0.4
  q_i: float = 2.0
  rate_h: float = 0.25
  q_h: float = 2.0
  rate_o: float = 0.4
  q_o: float = 2.0
  rate_w: float = 0.5
  q_w: float = 2.0
  impl: str = "sparseout"
  gradient: str = "exact"

  def __post_init__(self):
    for s in "eihow":
      r, q = getattr(self, f"rate_{s}"), getattr(self, f"q_{s}")
      if not 0.0 <= float(r) < 1.0:
        raise ValueError(f"rate_{s} must be a drop probability in [0, 1), got {r}")
      if not float(q) > 0.0:
        raise ValueError(f"q_{s} must be > 0, got {q}")
    if self.impl not in ("sparseout", "dropout"):
      raise ValueError(f"impl must be 'sparseout' or 'dropout', got {self.impl!r}")
    if self.gradient not in ("exact", "reference"):
      raise ValueError(f"gradient must be 'exact' or 'reference', got {self.gradient!r}")

  @classmethod
  def off(cls) -> Regularisation:
    """All rates zero (the deterministic model)."""
    return cls(rate_e=0.0, rate_i=0.0, rate_h=0.0, rate_o=0.0, rate_w=0.0)


def _noise(reg: Regularisation, site: str, key: jax.Array, x: jax.Array, bdims=()) -> jax.Array:
  """Sparseout (or Flax dropout) of ``x`` with the rate and q of ``site``."""
  rate, q = float(getattr(reg, f"rate_{site}")), float(getattr(reg, f"q_{site}"))
  if rate == 0.0:
    return x
  if reg.impl == "dropout":
    return nnx.Dropout(rate, broadcast_dims=bdims)(x, deterministic=False, rngs=key)
  return sparseout_jax.sparseout(key, x, rate, q, broadcast_dims=bdims, gradient=reg.gradient)


def _weight_noise(reg: Regularisation, key: jax.Array, w: jax.Array) -> jax.Array:
  """DropConnect-style sparseout of a hidden-to-hidden matrix."""
  if reg.rate_w == 0.0:
    return w
  if reg.impl == "dropout":
    return nnx.Dropout(reg.rate_w)(w, deterministic=False, rngs=key)
  return sparseout_jax.weight_sparseout(key, w, reg.rate_w, reg.q_w, gradient=reg.gradient)


def _embed(
  reg: Regularisation, key: jax.Array | None, table: jax.Array, ids: jax.Array
) -> jax.Array:
  """Embedding lookup with one mask per word type (AWD-LSTM's embedded dropout)."""
  if key is None or reg.rate_e == 0.0:
    return table[ids]
  if reg.impl == "dropout":
    return nnx.Dropout(reg.rate_e, broadcast_dims=(1,))(table, deterministic=False, rngs=key)[ids]
  return sparseout_jax.embedding_sparseout(
    key, table, ids, reg.rate_e, reg.q_e, gradient=reg.gradient
  )


def lstm_scan(
  xproj: jax.Array,
  w_hh: jax.Array,
  h0: jax.Array,
  c0: jax.Array,
  length: jax.Array | None = None,
  compute_dtype: Any = jnp.float32,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """LSTM recurrence given precomputed input projections (gate order i, f, g, o).

  ``g_t = xproj_t + h_{t-1} W_hh``; ``c_t = sig(f) c_{t-1} + sig(i) tanh(g)``; ``h_t = sig(o) tanh(c_t)``.

  Args:
    xproj: ``(T, B, 4H)`` float32, ``x_t W_ih + b`` for all steps.
    w_hh: ``(H, 4H)`` recurrent weights (already noised).
    h0, c0: ``(B, H)`` initial state.
    length: optional int scalar; steps ``t >= length`` leave the state unchanged (padding).
    compute_dtype: dtype of the recurrent matmul operands.

  Returns:
    Outputs ``(T, B, H)`` float32 and the final state ``(h, c)`` at step ``length``.
  """
  w = w_hh.astype(compute_dtype)
  steps = jnp.arange(xproj.shape[0])

  def step(carry, inp):
    h, c = carry
    xp, t = inp
    g = xp + jnp.dot(h.astype(compute_dtype), w, preferred_element_type=jnp.float32)
    i, f, gg, o = jnp.split(g, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
    if length is not None:
      keep = t < length
      h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
    return (h_new, c_new), h_new

  (h, c), ys = lax.scan(step, (h0, c0), (xproj, steps))
  return ys, (h, c)


def pack_cudnn_weights(
  w_ih: jax.Array, w_hh: jax.Array, b_ih: jax.Array, b_hh: jax.Array
) -> jax.Array:
  """Pack one layer's weights in cuDNN's flat layout (W_ih, W_hh as (4H, in), then b_ih, b_hh)."""
  return jnp.concatenate([w_ih.T.ravel(), w_hh.T.ravel(), b_ih, b_hh]).astype(jnp.float32)


def lstm_cudnn(
  x: jax.Array,
  w_ih: jax.Array,
  w_hh: jax.Array,
  b_ih: jax.Array,
  b_hh: jax.Array,
  h0: jax.Array,
  c0: jax.Array,
  length: jax.Array | None = None,
  lstm_fn=None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """One LSTM layer through ``jax.experimental.rnn.lstm`` (cuDNN; float32 only).

  Args:
    x: ``(T, B, in)`` inputs.
    w_ih, w_hh, b_ih, b_hh: the layer's weights (``w_hh`` already noised).
    h0, c0: ``(B, H)`` initial state.
    length: optional int scalar, the real number of steps.
    lstm_fn: override of ``rnn.lstm`` (tests pass a CPU reference).

  Returns:
    Outputs ``(T, B, H)`` and the final state at ``length``.
  """
  from jax.experimental import rnn

  fn = rnn.lstm if lstm_fn is None else lstm_fn
  t, b, n_in = x.shape
  hid = h0.shape[-1]
  seq = jnp.full((b,), t if length is None else length, jnp.int32)
  y, hn, cn = fn(
    jnp.swapaxes(x, 0, 1).astype(jnp.float32),
    h0[None],
    c0[None],
    pack_cudnn_weights(w_ih, w_hh, b_ih, b_hh),
    seq,
    input_size=n_in,
    hidden_size=hid,
    num_layers=1,
    dropout=0.0,
    bidirectional=False,
  )
  return jnp.swapaxes(y, 0, 1), (hn[0], cn[0])


# max |cuDNN - scan| / max |scan| allowed by the check below (TF32 is ruled out there).
CUDNN_TOLERANCE = 1e-3


def check_cudnn_backend(lstm_fn=None) -> float:
  """Run one small layer through ``lstm_cudnn`` and ``lstm_scan`` under ``jit``; raise if they differ.

  The cuDNN call sits between the time-major/batch-major transposes inside the compiled program,
  exactly as in the model. Why this exists: with JAX 0.11.2 on an H100 and an H200 (2026-11-26),
  ``jax.experimental.rnn.lstm`` returned wrong outputs whenever such a transpose was compiled next to
  it (relative error 0.4 to 1.9, from the first step), while the same call outside ``jit`` agreed with
  the scan layer to 2e-7. The model refuses the cuDNN backend where this check fails, rather than
  train on wrong numbers; where JAX is fixed, the check passes and the backend works.

  Args:
    lstm_fn: override of ``jax.experimental.rnn.lstm`` (tests pass a CPU stand-in).

  Returns:
    The relative difference ``max |cuDNN - scan| / max |scan|`` of the outputs.

  Raises:
    RuntimeError: when it exceeds ``CUDNN_TOLERANCE``.
  """
  t, b, n_in, hid = 7, 3, 5, 4
  # Concrete even when a model is built under tracing (nnx.eval_shape, jit).
  with jax.ensure_compile_time_eval(), jax.default_matmul_precision("highest"):
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (t, b, n_in))
    w_ih = jax.random.normal(k[1], (n_in, 4 * hid))
    w_hh = jax.random.normal(k[2], (hid, 4 * hid))
    bias = jax.random.normal(k[3], (4 * hid,))
    zero = jnp.zeros((b, hid))
    want = jax.jit(lstm_scan)(x @ w_ih + 2 * bias, w_hh, zero, zero)[0]
    got = jax.jit(lambda *a: lstm_cudnn(*a, lstm_fn=lstm_fn)[0])(
      x, w_ih, w_hh, bias, bias, zero, zero
    )
    rel = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
  if not rel <= CUDNN_TOLERANCE:
    raise RuntimeError(
      f"backend='cudnn': jax.experimental.rnn.lstm under jit differs from the scan LSTM on the "
      f"same weights (relative difference {rel:.2g} > {CUDNN_TOLERANCE}); this JAX "
      f"({jax.__version__}) computes a wrong cuDNN LSTM here. Use backend='scan'."
    )
  return rel


_checked_cudnn = functools.cache(check_cudnn_backend)


class SparsityProbe(nnx.Module):
  """Records the sparsity of the activations at one Sparseout site (the input of its noise).

  Calling it returns ``x`` unchanged and sows ``sparseout_jax.sparsity_stats(x)`` as an
  ``nnx.Intermediate`` named ``"sparsity"`` (read with ``sparseout_jax.sparsity_records``), in
  training and in evaluation alike.
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    self.sow(nnx.Intermediate, "sparsity", sparseout_jax.sparsity_stats(x))
    return x


class LSTMLayer(nnx.Module):
  """LSTM weights in PyTorch/cuDNN convention (double bias, gate order i, f, g, o), U(-1/sqrt(H), 1/sqrt(H))."""

  def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
    k = 1.0 / hidden**0.5
    init = jax.nn.initializers.uniform(2 * k)

    def u(shape):
      return init(rngs.params(), shape, jnp.float32) - k

    self.w_ih = nnx.Param(u((in_features, 4 * hidden)))
    self.w_hh = nnx.Param(u((hidden, 4 * hidden)))
    self.b_ih = nnx.Param(u((4 * hidden,)))
    self.b_hh = nnx.Param(u((4 * hidden,)))
    self.hidden = hidden


class LSTMLM(nnx.Module):
  """AWD-LSTM: embedding, stacked LSTMs (last one of embedding size), tied decoder."""

  def __init__(
    self,
    vocab_size: int,
    emb_size: int = 400,
    hidden_size: int = 1150,
    num_layers: int = 3,
    reg: Regularisation | None = None,
    *,
    compute_dtype: Any = jnp.float32,
    backend: str = "scan",
    record_sparsity: bool = False,
    rngs: nnx.Rngs,
  ):
    """Build the model.

    Args:
      vocab_size: V.
      emb_size: E (also the last LSTM's size: the decoder is tied to the embedding).
      hidden_size: size of the inner LSTM layers.
      num_layers: number of LSTM layers (>= 1).
      reg: regularisation (default: AWD-LSTM PTB rates at q = 2).
      compute_dtype: matmul operand dtype (``jnp.bfloat16`` for mixed precision); params stay float32.
      backend: ``"scan"`` (lax.scan, any device) or ``"cudnn"`` (``jax.experimental.rnn``, GPU, float32;
        on a GPU, :func:`check_cudnn_backend` runs first and refuses a JAX whose cuDNN LSTM is wrong).
      record_sparsity: record the sparsity of the activations entering the locked sites on every call:
        ``site_i`` (embedding output), ``site_h/<l>`` (output of LSTM layer l below the last), ``site_o``
        (last LSTM output). The embedding (``e``) and weight (``w``) sites act on parameters, not on
        activations, and record nothing.
      rngs: parameter initialisation keys.
    """
    if num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if backend not in ("scan", "cudnn"):
      raise ValueError(f"backend must be 'scan' or 'cudnn', got {backend!r}")
    if backend == "cudnn" and jax.default_backend() == "gpu":
      _checked_cudnn()  # once per process: a wrong cuDNN LSTM raises here, not after training
    self.reg = reg if reg is not None else Regularisation()
    self.compute_dtype = compute_dtype
    self.backend = backend
    self.sizes = tuple([hidden_size] * (num_layers - 1) + [emb_size])
    self.embedding = nnx.Param(
      jax.random.uniform(rngs.params(), (vocab_size, emb_size), jnp.float32, -0.1, 0.1)
    )
    self.decoder_bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))
    ins = [emb_size, *self.sizes[:-1]]
    self.layers = nnx.List(
      [LSTMLayer(i, h, rngs=rngs) for i, h in zip(ins, self.sizes, strict=True)]
    )
    probe = SparsityProbe if record_sparsity else lambda: None
    self.site_i, self.site_o = nnx.data(probe()), nnx.data(probe())
    self.site_h = (
      nnx.List([probe() for _ in self.sizes[:-1]]) if record_sparsity else nnx.data(None)
    )

  def init_carry(self, batch_size: int) -> Carry:
    """Zero hidden state for ``batch_size`` streams."""
    return tuple((jnp.zeros((batch_size, h)), jnp.zeros((batch_size, h))) for h in self.sizes)

  def __call__(
    self,
    ids: jax.Array,
    carry: Carry,
    *,
    key: jax.Array | None = None,
    length: jax.Array | None = None,
  ) -> tuple[jax.Array, Carry, dict[str, jax.Array]]:
    """Run the LM over a window.

    Args:
      ids: ``(T, B)`` int token ids.
      carry: per-layer ``(h, c)``, each ``(B, H_l)``.
      key: noise key; ``None`` means deterministic (evaluation).
      length: optional int scalar: only the first ``length`` steps are real (the carry is taken there).

    Returns:
      ``logits`` ``(T, B, V)`` float32, the new carry, and ``{"raw": last LSTM output, "dropped":
      it after output sparseout}`` for AR/TAR.
    """
    reg, cd = self.reg, self.compute_dtype
    train = key is not None
    site = (lambda s: jax.random.fold_in(key, s)) if train else (lambda s: None)
    table = self.embedding[...]
    x = _embed(reg, site(_SITE_E), table, ids)
    if self.site_i is not None:
      self.site_i(x)
    if train:
      x = _noise(reg, "i", site(_SITE_I), x, (0,))
    new_carry = []
    raw = x
    for li, (layer, (h0, c0)) in enumerate(zip(self.layers, carry, strict=True)):
      w_hh = layer.w_hh[...]
      if train:
        w_hh = _weight_noise(reg, site(_SITE_W + li), w_hh)
      if self.backend == "cudnn":
        raw, hc = lstm_cudnn(
          x, layer.w_ih[...], w_hh, layer.b_ih[...], layer.b_hh[...], h0, c0, length
        )
      else:
        xproj = jnp.dot(
          x.astype(cd), layer.w_ih[...].astype(cd), preferred_element_type=jnp.float32
        )
        xproj = xproj + (layer.b_ih[...] + layer.b_hh[...])
        raw, hc = lstm_scan(xproj, w_hh, h0, c0, length, cd)
      new_carry.append(hc)
      x = raw
      if self.site_h is not None and li < len(self.layers) - 1:
        self.site_h[li](x)
      if train and li < len(self.layers) - 1:
        x = _noise(reg, "h", site(_SITE_H + li), x, (0,))
    if self.site_o is not None:
      self.site_o(raw)
    dropped = _noise(reg, "o", site(_SITE_O), raw, (0,)) if train else raw
    logits = jnp.dot(dropped.astype(cd), table.T.astype(cd), preferred_element_type=jnp.float32)
    logits = logits + self.decoder_bias[...]
    return logits, tuple(new_carry), {"raw": raw, "dropped": dropped}


def lm_losses(
  logits: jax.Array,
  targets: jax.Array,
  weights: jax.Array,
  raw: jax.Array,
  dropped: jax.Array,
  alpha: float = 2.0,
  beta: float = 1.0,
) -> dict[str, jax.Array]:
  """Cross-entropy plus AWD-LSTM's activation regularisers, averaged over real steps.

  ``nll = sum w CE / sum w``; ``AR = alpha mean(dropped^2)``; ``TAR = beta mean((raw_{t+1} - raw_t)^2)``.

  Args:
    logits: ``(T, B, V)``.
    targets: ``(T, B)`` int.
    weights: ``(T, B)`` 0/1 float (0 on padding).
    raw, dropped: ``(T, B, F)`` last-layer output before / after output sparseout.
    alpha, beta: AR and TAR coefficients (0 disables).

  Returns:
    ``{"loss": nll + AR + TAR, "nll", "ar", "tar"}`` scalars.
  """
  logz = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  wsum = jnp.maximum(weights.sum(), 1.0)
  nll = ((logz - tgt) * weights).sum() / wsum
  feat = raw.shape[-1]
  ar = alpha * ((dropped.astype(jnp.float32) ** 2).sum(-1) * weights).sum() / (wsum * feat)
  pair_w = weights[1:] * weights[:-1]
  diff = (raw[1:] - raw[:-1]).astype(jnp.float32)
  tar = beta * ((diff**2).sum(-1) * pair_w).sum() / (jnp.maximum(pair_w.sum(), 1.0) * feat)
  return {"loss": nll + ar + tar, "nll": nll, "ar": ar, "tar": tar}
