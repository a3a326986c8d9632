"""The Sparseout function: its forward pass, its derivative rule and the dropout fast path."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from sparseout_jax import _validate
from sparseout_jax._power import abs_pow, abs_pow_traced, root_chain, with_sign_of

ABS_FLOOR = 1e-12
"""The derivative treats |x| below this floor as equal to it: the constant the authors add to
|x| in their PyTorch code. With it the multiplier |x|**(q/2 - 1) of the q < 2 gradient stays
below 1e12 for every q > 0, so the gradient is finite at x = 0."""

CHECKPOINT_NAME = "sparseout"
"""The ``jax.ad_checkpoint.checkpoint_name`` of every sparseout output with q != 2: a policy such
as ``jax.checkpoint_policies.save_only_these_names(CHECKPOINT_NAME)`` keeps it."""

MASK_NAME = "sparseout_mask"
"""The ``checkpoint_name`` of sparseout's keep mask (q != 2, ``residual="mask"``), which
:func:`remat_policy` saves."""

_POLICY = jax.checkpoint_policies.save_from_both_policies(
  jax.checkpoint_policies.dots_saveable, jax.checkpoint_policies.save_only_these_names(MASK_NAME)
)


def remat_policy(prim: Any, *args: Any, **params: Any) -> bool:
  """A ``jax.checkpoint`` policy: keep sparseout's 1-byte mask and the results of matmuls and
  convolutions; recompute the elementwise rest, sparseout's output among it.

  Wrap sparseout and the layer that consumes its output, e.g. ``nnx.remat(lambda x:
  conv(noise(x)), policy=remat_policy)``: that layer's backward pass needs y, which is
  then recomputed from x and the mask (one elementwise pass) instead of kept (2 or 4 bytes
  an element), so the step keeps x and the mask where dropout's keeps y and the mask. At
  q = 2 (dropout, Flax's operations) nothing is named and the mask is recomputed from the
  key. (A save-everything-but-y policy cannot do this: JAX saves the value from the
  operation that produced it.)

  Args:
    prim: the primitive (as every ``jax.checkpoint`` policy receives it).
    *args: its abstract inputs.
    **params: its parameters.

  Returns:
    Whether to save the primitive's output.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparseout_jax import remat_policy, sparseout
    >>> def layer(w, x, key):
    ...   return jnp.tanh(sparseout(key, x, 0.5, 1.5) @ w).sum()
    >>> f = jax.checkpoint(layer, policy=remat_policy)
    >>> g = jax.grad(f)(jnp.ones((3, 2)), jnp.ones((4, 3)), jax.random.key(0))
    >>> g.shape
    (3, 2)
  """
  return _POLICY(prim, *args, **params)


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """float32 for half types (so the multiplier neither overflows nor loses precision)."""
  return jnp.promote_types(dtype, jnp.float32)


def _noise(mask: jax.Array, p: Any, dtype: jnp.dtype) -> jax.Array:
  """eta = m / k - 1: p / k where kept, -1 where dropped; E[eta] = 0, Var[eta] = p / k."""
  return jnp.where(mask, jnp.asarray(p / (1.0 - p), dtype), jnp.asarray(-1.0, dtype))


def _pow(a: jax.Array, e: Any) -> jax.Array:
  """a ** e: square-root chains for a static exponent, exp(e log a) for a traced one."""
  if isinstance(e, float):
    return abs_pow(a, e)
  return abs_pow_traced(a, e)


def _forward(x: jax.Array, mask: jax.Array, p: Any, q: Any) -> jax.Array:
  """y = x + sign(x) |x|**(q/2) eta, computed in float32 or wider, returned in x's dtype.

  sign(x) |x|**(q/2) is x |x|**(q/2 - 1) for a static q >= 2 (no sign, no division) and
  |x|**(q/2) with x's sign bit otherwise: equal values, fewer operations than ``jnp.sign``.
  """
  cdt = _compute_dtype(x.dtype)
  xf = x.astype(cdt)
  a = jnp.abs(xf)
  if isinstance(q, float) and q >= 2:
    signed = xf * abs_pow(a, q / 2 - 1)
  else:
    m = _pow(a, q / 2)
    if not (isinstance(q, float) and root_chain(q / 2)):
      # sign(x) = 0 wherever x == 0 holds, which on CPU (subnormals read as zero) includes
      # subnormal x: a square root reads them as zero too, pow and exp(log) do not.
      m = jnp.where(xf == 0, jnp.zeros_like(m), m)
    signed = with_sign_of(m, xf)
  return (xf + signed * _noise(mask, p, cdt)).astype(x.dtype)


def _tangent(t: jax.Array, x: jax.Array, mask: jax.Array, p: Any, q: Any, exact: bool) -> jax.Array:
  """dy = t (1 + c |x|**(q/2 - 1) eta), |x| floored at ABS_FLOOR; c = q/2 (exact) or 1."""
  cdt = _compute_dtype(x.dtype)
  a = jnp.maximum(jnp.abs(x.astype(cdt)), ABS_FLOOR)
  coef = q / 2 if exact else 1.0
  dydx = 1.0 + coef * _pow(a, q / 2 - 1) * _noise(mask, p, cdt)
  if cdt != x.dtype:
    # A float16 derivative saturates at its largest finite value rather than overflowing
    # (clipped before the product, which must stay linear in t to be transposed).
    big = jnp.finfo(x.dtype).max
    dydx = jnp.clip(dydx, -big, big)
  return (t.astype(cdt) * dydx).astype(x.dtype)


def _guard_traced(y: jax.Array, p: Any, q: Any) -> jax.Array:
  """For traced p, q: zeros at p = 1 (as the static path), NaN where p or q is invalid."""
  if isinstance(p, float):
    return y
  valid = (p >= 0) & (p <= 1) & (q > 0) & jnp.isfinite(q)
  return jnp.where(valid, jnp.where(p < 1, y, jnp.zeros_like(y)), jnp.full_like(y, jnp.nan))


def _mask_sharding(x: jax.Array, shape: tuple[int, ...]) -> Any:
  """x's sharding for a mask of ``shape``: the same axes, broadcast (size-1) dims replicated."""
  sharding = jax.typeof(x).sharding
  if tuple(shape) == tuple(x.shape) or not hasattr(sharding, "spec"):
    return sharding
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  kept = [s if n == m else None for s, n, m in zip(spec, shape, x.shape, strict=True)]
  return sharding.update(spec=PartitionSpec(*kept))


def _bernoulli(rng: jax.Array, keep: Any, like: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Flax Dropout's mask, by its own operation (``random.bernoulli``), with ``like``'s sharding."""
  return random.bernoulli(rng, keep, shape, out_sharding=_mask_sharding(like, shape))


def _keep_threshold(keep: Any, nmant: int) -> Any:
  """ceil(keep 2**nmant), keep clipped to [0, 1] (NaN to 0): the integer form of u < keep.

  A uniform u = i 2**-nmant (i an nmant-bit integer, as ``random.uniform`` makes it) is
  below keep if and only if i < ceil(keep 2**nmant). A Python int for a Python float keep
  (rounded to its float type first, as ``bernoulli`` does), else an unsigned array.
  """
  scale = 2.0**nmant
  if isinstance(keep, float):
    k = float(np.asarray(keep, lax.dtype(keep)))
    return math.ceil(min(max(k, 0.0), 1.0) * scale)
  k = jnp.where(keep > 0, jnp.minimum(keep, 1.0), 0.0)  # NaN keeps nothing, as u < NaN
  return lax.convert_element_type(jnp.ceil(k * scale), jnp.dtype(f"uint{8 * k.dtype.itemsize}"))


def draw_mask(rng: jax.Array, keep: Any, like: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """``random.bernoulli(rng, keep, shape)`` bit for bit, compared in the integer domain.

  ``bernoulli`` keeps an entry where u < keep, u = (b >> (w - m)) 2**-m made of the top m
  bits of a w-bit random word b (keep's float type: w = 32, m = 23 for float32): a shift,
  OR, bit cast, subtraction, maximum and float compare per element. The same mask is
  b >> (w - m) < ceil(keep 2**m) (``_keep_threshold``), or, for a static keep < 1,
  b < ceil(keep 2**m) 2**(w - m): one integer compare, in every pass that reads the bits.
  Drawn with ``like``'s sharding (as nnx.Dropout), broadcast dims replicated.
  """
  info = jnp.finfo(lax.dtype(keep))
  word = jnp.dtype(f"uint{info.bits}")
  bits = random.bits(rng, shape, word, out_sharding=_mask_sharding(like, shape))
  shift = info.bits - info.nmant
  threshold = _keep_threshold(keep, info.nmant)
  if isinstance(threshold, int) and threshold < 2**info.nmant:
    return bits < jnp.asarray(threshold << shift, word)
  return lax.shift_right_logical(bits, jnp.asarray(shift, word)) < threshold


@functools.cache
def _perturbation(exact: bool, p: float | None, q: float | None) -> Callable:
  """y(x, mask, p, q) with the sparseout derivative rule as a custom JVP.

  Static p and q (Python floats) are closed over, so the fast power forms apply; with
  ``p = q = None`` they are taken as (traced) arguments. The JVP rule is linear in the
  tangent and diagonal, so its transpose, the reverse-mode rule, is g (1 + c |x|**(q/2-1)
  eta): the same backward pass as a custom VJP, and forward mode works as well.
  """

  @jax.custom_jvp
  def f(x, mask, p_arg, q_arg):
    p_, q_ = (p, q) if p is not None else (p_arg, q_arg)
    return _guard_traced(_forward(x, mask, p_, q_), p_, q_)

  @f.defjvp
  def f_jvp(primals, tangents):
    x, mask, p_arg, q_arg = primals
    p_, q_ = (p, q) if p is not None else (p_arg, q_arg)
    dx = _guard_traced(_tangent(tangents[0], x, mask, p_, q_, exact), p_, q_)
    return f(x, mask, p_arg, q_arg), dx

  return f


@functools.cache
def _rematerialised(
  exact: bool,
  residual: str,
  p: float | None,
  q: float | None,
  shape: tuple[int, ...],
  prevent_cse: bool,
) -> Callable:
  """The differentiable op y(x, mask_or_key, p, q), rematerialised so that reverse mode
  keeps only its inputs: x and the 1-byte mask (``"mask"``) or x and the key (``"key"``).

  ``prevent_cse=True`` puts an optimization barrier between the forward pass and its
  recomputation in the backward pass; ``False`` lets XLA fuse the two into one pass over
  memory. Both compute the same values and derivatives.
  """
  f = _perturbation(exact, p, q)

  def op(x, src, p_arg, q_arg):
    if residual == "key":
      # The backward pass redraws this mask from the same key: a clone tells the key-reuse
      # checker that the second draw is the deliberate replay of the first, not a reuse.
      src = draw_mask(random.clone(src), 1.0 - (p if p is not None else p_arg), x, shape)
    return f(x, src, p_arg, q_arg)

  return jax.checkpoint(op, prevent_cse=prevent_cse)


@functools.cache
def _op(exact: bool, residual: str, p: float | None, q: float | None, shape: tuple[int, ...]):
  """The op with the rematerialisation each platform runs fastest, chosen when lowering.

  On CPU the barrier is faster (measured: 1M float32 elements, 0.98 x Flax Dropout with it,
  1.22 without); on GPU it costs a second pass over x and the mask (16M float32: 1.47 x
  with it, 1.06 without), so other platforms fuse. ``lax.platform_dependent`` lowers only
  the branch of the platform compiled for. The key residual keeps its barrier everywhere:
  without it XLA may keep the forward's mask rather than redraw it, which is what that
  residual exists to avoid.
  """
  barrier = _rematerialised(exact, residual, p, q, shape, True)
  if residual == "key":
    return barrier
  fused = _rematerialised(exact, residual, p, q, shape, False)

  def op(x, src, p_arg, q_arg):
    return lax.platform_dependent(x, src, p_arg, q_arg, cpu=barrier, default=fused)

  return op


def sparseout(
  rng: jax.Array,
  x: jax.Array,
  p: float | jax.Array,
  q: float | jax.Array,
  *,
  broadcast_dims: Sequence[int] = (),
  gradient: str = "exact",
  residual: str = "mask",
) -> jax.Array:
  r"""Sparseout: dropout noise scaled by |x|**(q/2), an L_q penalty on activations (paper 3).

  With drop rate p, keep probability k = 1 - p, mask m ~ Bernoulli(k) and noise
  eta = m / k - 1 (E[eta] = 0, Var[eta] = p / k):

  .. math::
    y = x + \operatorname{sign}(x)\,|x|^{q/2}\,\eta,
    \qquad E[y] = x, \qquad \operatorname{Var}[y] = |x|^q \, p / k.

  q = 2 is inverted dropout, y = x m / k, computed by Flax's own operations (bit-equal
  to ``flax.linen.Dropout`` / ``flax.nnx.Dropout`` for the same key). q < 2 pushes
  activations towards sparsity, q > 2 towards density. y = 0 where x = 0.

  Derivative (``gradient``), used by reverse and forward mode alike:

  - ``"exact"``: dy/dx = 1 + (q/2) |x|**(q/2 - 1) eta, the true derivative.
  - ``"reference"``: dy/dx = 1 + |x|**(q/2 - 1) eta, the authors' PyTorch rule.

  For q < 2 the derivative is unbounded as x -> 0, and undefined at 0; the rule takes
  |x| as at least ``ABS_FLOOR`` = 1e-12 (the authors' constant), so at and near x = 0
  the derivative is that of |x| = 1e-12: finite for every finite input and q > 0. The
  rule is a ``jax.custom_jvp`` under ``jax.checkpoint``, so ``grad`` keeps exactly x and
  a 1-byte mask (or the key) for the backward pass, and ``jvp``, ``jacfwd``,
  ``linearize`` and ``hessian`` work too. No derivative flows to p or q. On CPU an
  optimization barrier separates the forward pass from its recomputation; on GPU and TPU
  XLA fuses the two into one pass over memory (chosen when the program is lowered). The
  output (q != 2) is named ``CHECKPOINT_NAME`` and its mask ``MASK_NAME``, for
  :func:`remat_policy`.

  The mask is drawn with x's sharding (broadcast dims replicated), so under a mesh each
  device draws only its shard's random bits. Half-precision inputs are computed in
  float32 and cast back; a float16 derivative saturates at float16's largest value.

  Args:
    rng: a PRNG key, typed (``jax.random.key``) or raw (``jax.random.PRNGKey``).
    x: a floating array.
    p: the DROP probability in [0, 1] (as Flax's ``rate``). A Python number selects the
      fast paths (p = 0 returns x; p = 1 zeros, as Flax). A traced scalar (a schedule
      under ``jit``) is allowed: p = 1 gives zeros, and a p outside [0, 1] (which cannot
      be checked while tracing) gives NaN rather than a silent wrong answer.
    q: the norm, > 0. A Python number selects the fast paths (q = 2 is Flax's dropout;
      an exponent q/2 or q/2 - 1 of the form n / 2**k with k <= 3 and |n| <= 8, as for
      q = 1, 1.5, 2.5, 3 or 4, uses square roots and their products; others ``pow``). A traced scalar is allowed
      (one compiled program for a whole q schedule; q = 2 then equals dropout to within
      rounding); a traced q <= 0 or non-finite q gives NaN.
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
  p = _validate.check_rate(p, "p", allow_traced=True)
  q = _validate.check_q(q, allow_traced=True)
  _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)
  _validate.check_choice(residual, "residual", _validate.RESIDUALS)
  rng = _validate.check_key(rng)
  x = _validate.check_float_array(x, "x")
  dims = _validate.check_broadcast_dims(broadcast_dims, x.ndim)
  shape = _validate.broadcast_shape(x.shape, dims)
  if isinstance(p, float):
    if p == 0.0:
      return x
    if p == 1.0:  # as Flax: zeros, and no 0 * inf in the gradient
      return jnp.zeros_like(x)
  if isinstance(q, float) and q == 2.0:
    return _dropout(rng, x, p, shape)
  static = isinstance(p, float) and isinstance(q, float)
  p_arg, q_arg = (0.0, 0.0) if static else _traced_pair(p, q)
  op = _op(gradient == "exact", residual, *((p, q) if static else (None, None)), shape)
  src = rng if residual == "key" else draw_mask(rng, 1.0 - (p if static else p_arg), x, shape)
  src = src if residual == "key" else checkpoint_name(src, MASK_NAME)
  return checkpoint_name(op(x, src, p_arg, q_arg), CHECKPOINT_NAME)


def _traced_pair(p: Any, q: Any) -> tuple[jax.Array, jax.Array]:
  """p and q as float32 scalars with no derivative (they are hyperparameters)."""
  return tuple(lax.stop_gradient(jnp.asarray(v, jnp.float32)) for v in (p, q))


def _dropout(rng: jax.Array, x: jax.Array, p: Any, shape: tuple[int, ...]) -> jax.Array:
  """Inverted dropout with exactly Flax's operations (and hence its bits and gradients)."""
  if not isinstance(p, float):  # a traced rate: p = 1 must give zeros without 0/0 backward
    p = lax.stop_gradient(jnp.asarray(p, jnp.float32))
    valid = (p >= 0) & (p <= 1)
    keep_prob = jnp.where(p < 1, 1.0 - p, 1.0)
    mask = jnp.broadcast_to(_bernoulli(rng, jnp.where(p < 1, keep_prob, 0.0), x, shape), x.shape)
    y = lax.select(mask, x / keep_prob.astype(x.dtype), jnp.zeros_like(x))
    return jnp.where(valid, y, jnp.full_like(y, jnp.nan))
  keep_prob = 1.0 - p
  mask = jnp.broadcast_to(_bernoulli(rng, keep_prob, x, shape), x.shape)
  return lax.select(mask, x / keep_prob, jnp.zeros_like(x))


def sparseout_with_mask(
  x: jax.Array,
  mask: jax.Array,
  p: float | jax.Array,
  q: float | jax.Array,
  *,
  gradient: str = "exact",
) -> jax.Array:
  r"""Sparseout with a given keep mask: y = x + sign(x) |x|**(q/2) (mask / (1 - p) - 1).

  The building block of the variants that look a mask up rather than draw it (embedding
  sparseout). ``mask`` is boolean and broadcasts against x. At q = 2 this is Flax's
  dropout arithmetic, ``select(mask, x / (1 - p), 0)``. Derivatives as :func:`sparseout`.

  Args:
    x: a floating array.
    mask: a boolean keep mask that broadcasts to x's shape.
    p: the drop probability in [0, 1], a Python float or a traced scalar.
    q: the norm, > 0, a Python float or a traced scalar.
    gradient: ``"exact"`` or ``"reference"``, as in :func:`sparseout`.

  Returns:
    The perturbed array, with the shape and dtype of x.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparseout_jax import sparseout_with_mask
    >>> x = jnp.array([1.0, -4.0])
    >>> sparseout_with_mask(x, jnp.array([True, False]), 0.5, 1.0)
    Array([ 2., -2.], dtype=float32)
  """
  p = _validate.check_rate(p, "p", allow_traced=True)
  q = _validate.check_q(q, allow_traced=True)
  _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)
  x = _validate.check_float_array(x, "x")
  if isinstance(p, float) and p == 1.0:
    return jnp.zeros_like(x)
  if isinstance(p, float) and isinstance(q, float) and q == 2.0:
    return lax.select(jnp.broadcast_to(mask, x.shape), x / (1.0 - p), jnp.zeros_like(x))
  mask = checkpoint_name(jnp.asarray(mask), MASK_NAME)
  if isinstance(p, float) and isinstance(q, float):
    y = _op(gradient == "exact", "mask", p, q, x.shape)(x, mask, 0.0, 0.0)
  else:
    p_arg, q_arg = _traced_pair(p, q)
    y = _op(gradient == "exact", "mask", None, None, x.shape)(x, mask, p_arg, q_arg)
  return checkpoint_name(y, CHECKPOINT_NAME)
