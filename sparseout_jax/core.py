"""The Sparseout function: its forward pass, custom VJP and dropout fast path."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax, random

from sparseout_jax import _validate
from sparseout_jax._power import abs_pow

# The backward pass treats |x| below this floor as equal to it. It is the constant the
# authors add to |x| in their PyTorch code; with it the multiplier |x|**(q/2 - 1) of the
# q < 2 gradient stays below 1e12 for every q > 0, so the gradient is finite at x = 0.
ABS_FLOOR = 1e-12


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """float32 for half types (so the multiplier neither overflows nor loses precision)."""
  return jnp.promote_types(dtype, jnp.float32)


def _noise(mask: jax.Array, p: float, dtype: jnp.dtype) -> jax.Array:
  """eta = m / k - 1: p / k where kept, -1 where dropped; E[eta] = 0, Var[eta] = p / k."""
  return jnp.where(mask, jnp.asarray(p / (1.0 - p), dtype), jnp.asarray(-1.0, dtype))


def _forward(x: jax.Array, mask: jax.Array, p: float, q: float) -> jax.Array:
  """y = x + sign(x) |x|**(q/2) eta, computed in float32 or wider, returned in x's dtype."""
  cdt = _compute_dtype(x.dtype)
  xf = x.astype(cdt)
  y = xf + jnp.sign(xf) * abs_pow(jnp.abs(xf), q / 2) * _noise(mask, p, cdt)
  return y.astype(x.dtype)


def _backward(
  x: jax.Array, mask: jax.Array, g: jax.Array, p: float, q: float, coef: float
) -> jax.Array:
  """dx = g (1 + coef |x|**(q/2 - 1) eta), |x| floored at ABS_FLOOR; coef = q/2 or 1."""
  cdt = _compute_dtype(x.dtype)
  a = jnp.maximum(jnp.abs(x.astype(cdt)), ABS_FLOOR)
  dydx = 1.0 + coef * abs_pow(a, q / 2 - 1) * _noise(mask, p, cdt)
  dx = g.astype(cdt) * dydx
  if cdt != x.dtype:
    # A float16 gradient saturates at its largest finite value rather than overflowing.
    big = jnp.finfo(x.dtype).max
    dx = jnp.clip(dx, -big, big)
  return dx.astype(x.dtype)


@functools.cache
def _with_mask(p: float, q: float, coef: float):
  """A custom-VJP y(x, mask) that saves x and the 1-byte mask for the backward pass."""

  @jax.custom_vjp
  def f(x, mask):
    return _forward(x, mask, p, q)

  def fwd(x, mask):
    return _forward(x, mask, p, q), (x, mask)

  def bwd(res, g):
    x, mask = res
    return _backward(x, mask, g, p, q, coef), None

  f.defvjp(fwd, bwd)
  return f


@functools.cache
def _with_key(p: float, q: float, coef: float, shape: tuple[int, ...]):
  """A custom-VJP y(x, key) that saves x and the key, and draws the mask again backward."""

  def mask_of(key):
    return random.bernoulli(key, 1.0 - p, shape)

  @jax.custom_vjp
  def f(x, key):
    return _forward(x, mask_of(key), p, q)

  def fwd(x, key):
    return _forward(x, mask_of(key), p, q), (x, key)

  def bwd(res, g):
    x, key = res
    return _backward(x, mask_of(key), g, p, q, coef), None

  f.defvjp(fwd, bwd)
  return f


def sparseout(
  rng: jax.Array,
  x: jax.Array,
  p: float,
  q: float,
  *,
  broadcast_dims: Sequence[int] = (),
  gradient: str = "exact",
  residual: str = "mask",
) -> jax.Array:
  r"""Sparseout: dropout noise scaled by |x|**(q/2), an L_q penalty on activations.

  With drop rate p, keep probability k = 1 - p, mask m ~ Bernoulli(k) and noise
  eta = m / k - 1 (E[eta] = 0, Var[eta] = p / k):

  .. math::
    y = x + \operatorname{sign}(x)\,|x|^{q/2}\,\eta,
    \qquad E[y] = x, \qquad \operatorname{Var}[y] = |x|^q \, p / k.

  q = 2 is inverted dropout, y = x m / k, computed by Flax's own operations (bit-equal
  to ``flax.linen.Dropout`` / ``flax.nnx.Dropout`` for the same key). q < 2 pushes
  activations towards sparsity, q > 2 towards density. y = 0 where x = 0.

  Backward (``gradient``):

  - ``"exact"``: dy/dx = 1 + (q/2) |x|**(q/2 - 1) eta, the true derivative.
  - ``"reference"``: dy/dx = 1 + |x|**(q/2 - 1) eta, the authors' PyTorch rule.

  For q < 2 the derivative is unbounded as x -> 0, and undefined at 0; the backward pass
  takes |x| as at least ``ABS_FLOOR`` = 1e-12 (the authors' constant), so at and near
  x = 0 the gradient is that of |x| = 1e-12: finite for every finite input and q > 0.
  Half-precision inputs (bfloat16, float16) are computed in float32 and cast back; a
  float16 gradient saturates at float16's largest finite value. The forward pass can
  overflow to +-inf only where the exact result lies outside the dtype's range.

  Args:
    rng: a PRNG key, typed (``jax.random.key``) or raw (``jax.random.PRNGKey``).
    x: a floating array.
    p: the DROP probability in [0, 1] (as Flax's ``rate``), a static Python float.
      p = 0 returns x; p = 1 returns zeros (and zero gradients), as Flax.
    q: the norm, a static Python float > 0.
    broadcast_dims: dims along which one mask is shared (variational / locked
      sparseout), as in Flax's Dropout.
    gradient: ``"exact"`` (default) or ``"reference"``; irrelevant at q = 2.
    residual: what the backward pass keeps: ``"mask"`` (x and a 1-byte mask, the
      default: faster by measurement, see ``benchmarks/``) or ``"key"`` (x and the key;
      the mask is drawn again, saving memory).

  Returns:
    The perturbed array, with the shape and dtype of x.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparseout_jax import sparseout
    >>> x = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    >>> y = sparseout(jax.random.key(0), x, p=0.5, q=1.5)
    >>> y.shape, bool(y[2] == 0.0)
    ((5,), True)
  """
  p = _validate.check_rate(p, "p")
  q = _validate.check_q(q)
  _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)
  _validate.check_choice(residual, "residual", _validate.RESIDUALS)
  x = _validate.check_float_array(x, "x")
  dims = _validate.check_broadcast_dims(broadcast_dims, x.ndim)
  if p == 0.0:
    return x
  if p == 1.0:  # as Flax: zeros, and no 0 * inf in the gradient
    return jnp.zeros_like(x)
  shape = _validate.broadcast_shape(x.shape, dims)
  if q == 2.0:
    return _dropout(rng, x, p, shape)
  coef = q / 2 if gradient == "exact" else 1.0
  if residual == "key":
    return _with_key(p, q, coef, shape)(x, rng)
  mask = random.bernoulli(rng, 1.0 - p, shape)
  return _with_mask(p, q, coef)(x, mask)


def _dropout(rng: jax.Array, x: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
  """Inverted dropout with exactly Flax's operations (and hence its bits and gradients)."""
  keep_prob = 1.0 - p
  mask = random.bernoulli(rng, p=keep_prob, shape=shape)
  mask = jnp.broadcast_to(mask, x.shape)
  return lax.select(mask, x / keep_prob, jnp.zeros_like(x))


def sparseout_with_mask(
  x: jax.Array, mask: jax.Array, p: float, q: float, *, gradient: str = "exact"
) -> jax.Array:
  r"""Sparseout with a given keep mask: y = x + sign(x) |x|**(q/2) (mask / (1 - p) - 1).

  The building block of the variants that look a mask up rather than draw it (embedding
  sparseout). ``mask`` is boolean and broadcasts against x. At q = 2 this is Flax's
  dropout arithmetic, ``select(mask, x / (1 - p), 0)``.

  Args:
    x: a floating array.
    mask: a boolean keep mask that broadcasts to x's shape.
    p: the drop probability in [0, 1), a static Python float.
    q: the norm, a static Python float > 0.
    gradient: ``"exact"`` or ``"reference"``, as in :func:`sparseout`.

  Returns:
    The perturbed array, with the shape and dtype of x.
  """
  p = _validate.check_rate(p, "p")
  q = _validate.check_q(q)
  _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)
  x = _validate.check_float_array(x, "x")
  if p == 1.0:
    return jnp.zeros_like(x)
  if q == 2.0:
    return lax.select(jnp.broadcast_to(mask, x.shape), x / (1.0 - p), jnp.zeros_like(x))
  coef = q / 2 if gradient == "exact" else 1.0
  return _with_mask(p, q, coef)(x, mask)
