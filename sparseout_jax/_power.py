"""Fast `a ** e` for a >= 0 and a static exponent e, and a sign transfer without `sign`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Exponents that are multiples of 1/2**_MAX_ROOTS take a chain of square roots and one
# integer power instead of exp(e * log(a)): on CPU a sqrt costs a fraction of exp + log,
# and it is correctly rounded, so the chain is as accurate as `pow` (a few ulp).
_MAX_ROOTS = 3
_MAX_INT_POWER = 8


def abs_pow(a: jax.Array, e: float) -> jax.Array:
  """Computes `a ** e` for non-negative `a` and a static real exponent `e`.

  For e = n / 2**k (k <= 3, |n| <= 8) the binary expansion of |e| = i + sum_j b_j 2**-j
  gives a ** |e| = a**i * prod_{b_j = 1} a**(2**-j), each factor a term of the chain
  sqrt(a), sqrt(sqrt(a)), ...: a**0.75 = sqrt(a) * sqrt(sqrt(a)), two roots and one
  product (fewer roundings than (a**0.25)**3). A negative e takes the reciprocal, which
  XLA turns into rsqrt where the last factor is a root. Other exponents use `lax.pow`.
  0 ** e is 0 for e > 0, 1 for e == 0 and inf for e < 0, as `pow`.

  Args:
    a: a non-negative floating array.
    e: the exponent, a Python float.

  Returns:
    `a ** e`, with the dtype of `a`.
  """
  chain = root_chain(e)
  if chain is None:
    return lax.pow(a, jnp.asarray(e, a.dtype))
  k, n = chain
  whole, frac = divmod(abs(n), 2**k)
  out = lax.integer_pow(a, whole) if whole else None
  root = a
  for j in range(k - 1, -1, -1):  # bit j of frac weighs 2**(j - k): the (k - j)-th root
    root = jnp.sqrt(root)
    if (frac >> j) & 1:
      out = root if out is None else out * root
  if out is None:
    return jnp.ones_like(a)
  return out if n > 0 else 1.0 / out


def root_chain(e: float) -> tuple[int, int] | None:
  """(k, n) with e = n / 2**k, k <= 3 and |n| <= 8, the exponents `abs_pow` takes by roots;
  None for the others (`lax.pow`)."""
  for k in range(_MAX_ROOTS + 1):
    n = e * 2**k
    if n == round(n) and abs(n) <= _MAX_INT_POWER:
      return k, round(n)
  return None


def abs_pow_traced(a: jax.Array, e: jax.Array) -> jax.Array:
  """Computes `a ** e` for non-negative `a` and a traced scalar exponent `e`, as exp(e log a).

  About 2.4x faster than `lax.pow` on CPU (1M float32 elements, measured 2026-11-26), within a
  few ulp of it. 0 ** e is exp(-inf) = 0 for e > 0 and inf for e < 0, as `pow`; 0 ** 0 is NaN,
  which no valid q reaches (the forward's exponent q/2 > 0; the backward's base is floored).

  Args:
    a: a non-negative floating array.
    e: the exponent, a scalar array.

  Returns:
    `a ** e`, with the dtype of `a`.
  """
  return jnp.exp(e.astype(a.dtype) * jnp.log(a))


def with_sign_of(m: jax.Array, x: jax.Array) -> jax.Array:
  """sign(x) * m for m >= 0 (or NaN) of x's dtype: x's sign bit ORed into m's bits.

  Exact, as sign(x) * m, except at x = +-0, where it gives +-m rather than 0 (callers pass
  an m that is 0 there) and at NaN x (m's value, signed). Two integer operations where
  `jnp.sign` takes five (two compares, a conversion, a copysign and a select).

  Args:
    m: a non-negative floating array.
    x: a floating array of m's dtype and shape.

  Returns:
    m with the sign of x.
  """
  bits = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
  sign = lax.bitcast_convert_type(x, bits) & jnp.asarray(1 << (8 * x.dtype.itemsize - 1), bits)
  return lax.bitcast_convert_type(lax.bitcast_convert_type(m, bits) | sign, x.dtype)
