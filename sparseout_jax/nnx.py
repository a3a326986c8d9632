"""Flax NNX layers: ``Sparseout`` (a drop-in for ``nnx.Dropout``) and ``BridgeoutLinear``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from

from sparseout_jax import _validate
from sparseout_jax.core import sparseout
from sparseout_jax.variants import bridgeout_dense

__all__ = ["BridgeoutLinear", "Sparseout"]


def _key_from(layer: nnx.Module, rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None):
  """The key for one call, chosen exactly as ``nnx.Dropout`` chooses it."""
  rngs = first_from(
    rngs,
    layer.rngs,
    error_msg=f"`deterministic` is False, but no `rngs` argument was provided to "
    f"{type(layer).__name__} as either a __call__ argument or class attribute.",
  )
  if isinstance(rngs, rnglib.Rngs):
    return rngs[layer.rng_collection]()
  if isinstance(rngs, rnglib.RngStream):
    return rngs()
  if isinstance(rngs, jax.Array):
    return rngs
  raise TypeError(f"rngs must be a Rngs, RngStream or jax.Array, but got {type(rngs)}.")


def _deterministic(layer: nnx.Module, deterministic: bool | None) -> bool:
  name = type(layer).__name__
  return first_from(
    deterministic,
    layer.deterministic,
    error_msg=f"No `deterministic` argument was provided to {name}: pass it to the "
    f"constructor, to __call__, or use `model.eval()` / `model.train()`.",
  )


class Sparseout(nnx.Dropout):
  r"""Sparseout layer: y = x + sign(x) |x|**(q/2) eta, eta = m/(1-rate) - 1.

  A drop-in replacement for ``flax.nnx.Dropout`` with one more number, ``q``: the same
  constructor and call-time ``deterministic`` / ``rngs`` semantics, ``model.train()`` /
  ``model.eval()`` and ``nnx.view`` included; at q = 2 its outputs and gradients equal
  ``nnx.Dropout``'s bit for bit. E[y] = x and Var[y] = |x|**q rate / (1 - rate);
  q < 2 makes activations sparser, q > 2 denser. See :func:`sparseout_jax.sparseout`.

  Args:
    rate: the DROP probability in [0, 1].
    q: the norm, > 0 (2 = dropout).
    broadcast_dims: dims that share one mask (variational / locked sparseout).
    deterministic: if True, the layer is the identity.
    rng_collection: the rng collection a key is drawn from.
    gradient: ``"exact"`` or ``"reference"`` backward rule.
    rngs: an ``nnx.Rngs`` or ``RngStream`` (forked, as ``nnx.Dropout`` does), or None.

  Example:
    >>> from flax import nnx
    >>> from sparseout_jax.nnx import Sparseout
    >>> layer = Sparseout(0.5, q=1.5, rngs=nnx.Rngs(dropout=0))
    >>> layer(jnp.ones((2, 3))).shape
    (2, 3)
  """

  def __init__(
    self,
    rate: float,
    q: float = 2.0,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    gradient: str = "exact",
    rngs: rnglib.Rngs | rnglib.RngStream | None = None,
  ):
    super().__init__(
      _validate.check_rate(rate, "rate"),
      broadcast_dims=broadcast_dims,
      deterministic=deterministic,
      rng_collection=rng_collection,
      rngs=rngs,
    )
    self.q = _validate.check_q(q)
    self.gradient = _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)

  def __call__(
    self,
    inputs: jax.Array,
    *,
    deterministic: bool | None = None,
    rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None = None,
  ) -> jax.Array:
    """Applies sparseout, or returns ``inputs`` when deterministic or rate == 0.

    Args:
      inputs: a floating array.
      deterministic: overrides the constructor's flag.
      rngs: a key, RngStream or Rngs; overrides the constructor's.

    Returns:
      The perturbed inputs (zeros when rate == 1).
    """
    if self.rate == 0.0 or _deterministic(self, deterministic):
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    return sparseout(
      _key_from(self, rngs),
      inputs,
      self.rate,
      self.q,
      broadcast_dims=self.broadcast_dims,
      gradient=self.gradient,
    )


class BridgeoutLinear(nnx.Module):
  r"""A linear layer with Bridgeout on its kernel: y_b = x_b (W + |W|**(q/2) eta_b) + b.

  Each example b gets its own (in, out) weight mask when ``per_example`` (the paper's
  slow baseline; cost and memory grow as batch x in x out), else one per call. Evaluation
  (``deterministic``) uses W. See :func:`sparseout_jax.bridgeout_dense`.

  Args:
    in_features: input width.
    out_features: output width.
    rate: the drop probability in [0, 1].
    q: the norm, > 0.
    per_example: one weight mask per example (default) or per batch.
    use_bias: add a bias.
    deterministic: if True, no noise.
    rng_collection: the rng collection the noise keys come from.
    rngs: ``nnx.Rngs`` for the parameters and the noise.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    rate: float,
    q: float,
    *,
    per_example: bool = True,
    use_bias: bool = True,
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: rnglib.Rngs,
  ):
    self.rate = _validate.check_rate(rate, "rate")
    self.q = _validate.check_q(q)
    self.per_example = per_example
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    self.kernel = nnx.Param(
      nnx.initializers.lecun_normal()(rngs.params(), (in_features, out_features))
    )
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else nnx.data(None)
    self.rngs = rngs[rng_collection].fork()

  def __call__(
    self,
    x: jax.Array,
    *,
    deterministic: bool | None = None,
    rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None = None,
  ) -> jax.Array:
    """Applies the (noisy) linear map to x of shape (batch, in_features)."""
    kernel = self.kernel[...]
    if self.rate == 0.0 or _deterministic(self, deterministic):
      y = x @ kernel
    else:
      y = bridgeout_dense(
        _key_from(self, rngs), x, kernel, self.rate, self.q, per_example=self.per_example
      )
    return y if self.bias is None else y + self.bias[...]

  def set_view(self, deterministic: bool | None = None):
    """Used by ``nnx.view`` / ``model.eval()``: ``deterministic`` turns the noise off."""
    if deterministic is not None:
      self.deterministic = deterministic
