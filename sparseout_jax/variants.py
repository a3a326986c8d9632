"""Sparseout variants for embeddings and weights, and Bridgeout (paper 3, 4.4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import random

from sparseout_jax import _validate
from sparseout_jax.core import _noise, sparseout, sparseout_with_mask


def embedding_sparseout(
  rng: jax.Array,
  table: jax.Array,
  ids: jax.Array,
  p: float | jax.Array,
  q: float | jax.Array,
  *,
  gradient: str = "exact",
) -> jax.Array:
  r"""Embedding sparseout: one mask per vocabulary row, applied to the looked-up rows.

  With a row mask m_v ~ Bernoulli(1 - p) for each word type v and eta_v = m_v/(1-p) - 1,

  .. math::
    \tilde W_v = W_v + \operatorname{sign}(W_v)\,|W_v|^{q/2}\,\eta_v,
    \qquad \text{out} = \tilde W[\text{ids}].

  Every occurrence of a word in the batch shares its row's mask (AWD-LSTM's embedded
  dropout at q = 2). Only the gathered rows are perturbed, with the mask looked up by id,
  so no V x E noise is made; the result equals ``sparseout(rng, table, p, q,
  broadcast_dims=(1,))[ids]`` bit for bit.

  Args:
    rng: a PRNG key.
    table: the (V, E) embedding table, floating.
    ids: integer token ids of any shape, in [0, V).
    p: the drop probability of a row, in [0, 1]: a Python number or a traced scalar (a
      schedule), as in :func:`sparseout`.
    q: the norm, > 0: a Python number or a traced scalar.
    gradient: ``"exact"`` or ``"reference"``.

  Returns:
    The perturbed embeddings, shape ``ids.shape + (E,)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparseout_jax import embedding_sparseout
    >>> table = jnp.ones((100, 8)); ids = jnp.array([[3, 3, 7]])
    >>> out = embedding_sparseout(jax.random.key(0), table, ids, 0.1, 1.5)
    >>> out.shape, bool((out[0, 0] == out[0, 1]).all())
    ((1, 3, 8), True)
  """
  p = _validate.check_rate(p, "p", allow_traced=True)
  q = _validate.check_q(q, allow_traced=True)
  table = _validate.check_float_array(table, "table")
  if table.ndim != 2:
    raise ValueError(f"`table` must be a (vocab, features) matrix, got shape {table.shape}.")
  if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
    raise TypeError(f"`ids` must be integer token ids, got dtype {jnp.result_type(ids)}.")
  rows = jnp.take(table, ids, axis=0)
  if isinstance(p, float) and p == 0.0:
    return rows
  # Drawn over (V, 1) exactly as sparseout(table, broadcast_dims=(1,)) would draw it.
  row_mask = random.bernoulli(rng, 1.0 - p, (table.shape[0], 1))
  return sparseout_with_mask(rows, jnp.take(row_mask, ids, axis=0), p, q, gradient=gradient)


def weight_sparseout(
  rng: jax.Array, w: jax.Array, p: float, q: float, *, gradient: str = "exact"
) -> jax.Array:
  r"""Weight sparseout (DropConnect-style): one mask over a weight per forward pass.

  .. math::
    \tilde W = W + \operatorname{sign}(W)\,|W|^{q/2}\,\eta, \qquad \eta = m/(1-p) - 1.

  At q = 2 this is DropConnect with inverted scaling (AWD-LSTM's WeightDrop). Call it
  once per forward pass and use the result at every time step.

  Args:
    rng: a PRNG key.
    w: a floating weight array.
    p: the drop probability in [0, 1].
    q: the norm, > 0.
    gradient: ``"exact"`` or ``"reference"``.

  Returns:
    The perturbed weight, with w's shape and dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparseout_jax import weight_sparseout
    >>> w = jnp.array([[0.5, -2.0], [1.0, 0.0]])
    >>> w_noisy = weight_sparseout(jax.random.key(0), w, 0.5, 1.5)
    >>> w_noisy.shape, float(w_noisy[1, 1])
    ((2, 2), 0.0)
  """
  return sparseout(rng, w, p, q, gradient=gradient)


def bridgeout_dense(
  rng: jax.Array,
  x: jax.Array,
  kernel: jax.Array,
  p: float,
  q: float,
  *,
  per_example: bool = True,
) -> jax.Array:
  r"""Bridgeout on a dense layer's weights (Khan et al. 2018), the paper's slow baseline.

  With eta = m / (1 - p) - 1 and the authors' rule (no sign),

  .. math::
    \tilde W^{(b)} = W + |W|^{q/2} \odot \eta^{(b)}, \qquad y_b = x_b \tilde W^{(b)},

  an independent (in, out) mask for every example b when ``per_example`` (the
  batch x in x out noise that makes it slow), else one mask shared by the batch.
  Gradients are JAX's autodiff of this formula.

  Args:
    rng: a PRNG key.
    x: inputs of shape (batch, in).
    kernel: the (in, out) weight matrix.
    p: the drop probability in [0, 1], a Python number (a traced value raises: this
      baseline is kept as the authors wrote it, for timing).
    q: the norm, > 0, a Python number (likewise).
    per_example: one weight mask per example (default) or per batch.

  Returns:
    x times the perturbed kernel, shape (batch, out).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparseout_jax import bridgeout_dense
    >>> x, kernel = jnp.ones((4, 3)), jnp.full((3, 2), 0.5)
    >>> bridgeout_dense(jax.random.key(0), x, kernel, 0.5, 1.5).shape
    (4, 2)
  """
  p = _validate.check_rate(p, "p")
  q = _validate.check_q(q)
  x = _validate.check_float_array(x, "x")
  kernel = _validate.check_float_array(kernel, "kernel")
  if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
    raise ValueError(
      f"`x` must be (batch, in) and `kernel` (in, out), got {x.shape} and {kernel.shape}."
    )
  if p == 0.0:
    return x @ kernel
  if p == 1.0:
    return x @ jnp.zeros_like(kernel)
  shape = ((x.shape[0],) if per_example else ()) + kernel.shape
  mask = random.bernoulli(rng, 1.0 - p, shape)
  eta = _noise(mask, p, kernel.dtype)
  w = kernel + jnp.abs(kernel) ** (q / 2) * eta
  if per_example:
    return jnp.einsum("bi,bio->bo", x, w)
  return x @ w
