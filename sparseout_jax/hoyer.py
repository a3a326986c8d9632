"""Hoyer's sparsity measure (paper 4.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def hoyer_sparsity(a: jax.Array, axis: int = -1) -> jax.Array:
  r"""Hoyer's sparsity of the vectors along ``axis``, in [0, 1].

  .. math::
    H(a) = \frac{\sqrt d - \lVert a\rVert_1 / \lVert a\rVert_2}{\sqrt d - 1}

  1 for a vector with one non-zero entry, 0 for one whose entries all have the same
  magnitude. The all-zero vector has no active unit and is defined as 1 (maximally
  sparse). Computed in float32 (or wider) after scaling by max|a|, so it neither
  overflows nor underflows.

  Args:
    a: a floating array; the vectors lie along ``axis``, of length d >= 2.
    axis: the axis of the vectors.

  Returns:
    H of each vector: ``a``'s shape without ``axis``. Average it for the paper's figure.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparseout_jax import hoyer_sparsity
    >>> hoyer_sparsity(jnp.array([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]))
    Array([1., 0.], dtype=float32)
  """
  a = jnp.asarray(a)
  if not jnp.issubdtype(a.dtype, jnp.floating):
    a = a.astype(jnp.float32)
  d = a.shape[axis]
  if d < 2:
    raise ValueError(f"hoyer_sparsity needs vectors of length >= 2 along axis {axis}, got {d}.")
  a = jnp.abs(a.astype(jnp.promote_types(a.dtype, jnp.float32)))
  scale = jnp.max(a, axis=axis, keepdims=True)
  zero = scale == 0
  a = a / jnp.where(zero, 1.0, scale)
  l1 = jnp.sum(a, axis=axis)
  l2 = jnp.sqrt(jnp.sum(a * a, axis=axis))
  sqrt_d = jnp.sqrt(jnp.asarray(d, a.dtype))
  h = (sqrt_d - l1 / jnp.where(l2 == 0, 1.0, l2)) / (sqrt_d - 1)
  return jnp.where(jnp.squeeze(zero, axis), 1.0, jnp.clip(h, 0.0, 1.0))
