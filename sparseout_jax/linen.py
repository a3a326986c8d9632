"""Flax Linen layer: ``Sparseout``, a drop-in for ``flax.linen.Dropout``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from sparseout_jax import _validate
from sparseout_jax.core import sparseout

__all__ = ["Sparseout"]


class Sparseout(nn.Module):
  r"""Sparseout layer for Linen: y = x + sign(x) |x|**(q/2) eta, eta = m/(1-rate) - 1.

  The attributes and call of ``flax.linen.Dropout`` plus ``q`` and ``gradient``:
  ``deterministic`` is merged with the call-time flag (``merge_param``), the key comes
  from ``make_rng(rng_collection)`` unless ``rng=`` is given. At q = 2 its outputs and
  gradients equal ``nn.Dropout``'s bit for bit under the same name: ``make_rng`` folds the
  module's path into the key, so in a compact model give it the name the Dropout had
  (``Sparseout(0.5, name="Dropout_0")``, or any explicit name both share). See :func:`sparseout_jax.sparseout`.

  Attributes:
    rate: the DROP probability in [0, 1].
    q: the norm, > 0 (2 = dropout).
    broadcast_dims: dims that share one mask (variational / locked sparseout).
    deterministic: if True, the layer is the identity.
    rng_collection: the rng collection a key is drawn from.
    gradient: ``"exact"`` or ``"reference"`` backward rule.

  Example:
    >>> import flax.linen as nn
    >>> from sparseout_jax.linen import Sparseout
    >>> layer = Sparseout(0.5, q=2.5)
    >>> y = layer.apply({}, jnp.ones(3), deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> y.shape
    (3,)
  """

  rate: float
  q: float = 2.0
  broadcast_dims: Sequence[int] = ()
  deterministic: bool | None = None
  rng_collection: str = "dropout"
  gradient: str = "exact"

  def __post_init__(self):
    _validate.check_rate(self.rate, "rate")
    _validate.check_q(self.q)
    _validate.check_choice(self.gradient, "gradient", _validate.GRADIENT_RULES)
    super().__post_init__()

  @nn.compact
  def __call__(
    self, inputs: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
  ) -> jax.Array:
    """Applies sparseout, or returns ``inputs`` when deterministic or rate == 0.

    Args:
      inputs: a floating array.
      deterministic: merged with the attribute (exactly one of them must be set).
      rng: a key; by default ``self.make_rng(self.rng_collection)``.

    Returns:
      The perturbed inputs (zeros when rate == 1).
    """
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    return sparseout(
      rng,
      inputs,
      float(self.rate),
      float(self.q),
      broadcast_dims=tuple(self.broadcast_dims),
      gradient=self.gradient,
    )
