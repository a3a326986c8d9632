"""One-hidden-layer ReLU autoencoder (paper section 4.1/4.2) with a regulariser on the hidden layer.

``x (784) -> ReLU(x W1 + b1) = h (H) -> [noise on h] -> h W2 + b2 = logits (784)``. The regulariser is
one of: ``"none"`` (plain backprop), ``"dropout"`` (``flax.nnx.Dropout`` on h), ``"sparseout"``
(``sparseout_jax.nnx.Sparseout(rate, q)`` on h), or ``"bridgeout"`` (Bridgeout on the encoder
weights W1, one weight mask per example: the paper's slow baseline). Noise is applied only when a
key is passed, so evaluation (``key=None``) measures the clean hidden activations, as the paper does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import sparseout_jax.nnx as so_nnx

REGULARIZERS: tuple[str, ...] = ("none", "dropout", "sparseout", "bridgeout")


class Autoencoder(nnx.Module):
  """784 -> H ReLU -> 784 autoencoder; the decoder returns logits (apply a sigmoid for pixels).

  Args:
    hidden: number of hidden ReLU units H.
    regularizer: one of :data:`REGULARIZERS`.
    rate: drop probability of the noise (dropout, sparseout, bridgeout), in [0, 1).
    q: sparseout / bridgeout norm (> 0; 2 is dropout for sparseout).
    gradient: sparseout backward rule, ``"exact"`` or ``"reference"``.
    record_sparsity: the Sparseout layer sows the sparsity records of h on every call, and the
      clean (``key=None``) pass calls it as the identity so evaluation records them too.
    input_dim: input width (784 for MNIST).
    rngs: ``nnx.Rngs`` for the parameters.
  """

  def __init__(
    self,
    hidden: int = 1024,
    *,
    regularizer: str = "none",
    rate: float = 0.5,
    q: float = 2.0,
    gradient: str = "exact",
    record_sparsity: bool = False,
    input_dim: int = 784,
    rngs: nnx.Rngs,
  ):
    if regularizer not in REGULARIZERS:
      raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
    if not isinstance(hidden, int) or hidden < 2:
      raise ValueError(f"hidden must be an int >= 2, got {hidden!r}")
    self.regularizer = regularizer
    if regularizer == "bridgeout":
      self.encoder = so_nnx.BridgeoutLinear(
        input_dim, hidden, rate, q, per_example=True, rngs=nnx.Rngs(params=rngs.params(), dropout=0)
      )
    else:
      self.encoder = nnx.Linear(input_dim, hidden, rngs=rngs)
    if regularizer == "dropout":
      self.noise = nnx.Dropout(rate)
    elif regularizer == "sparseout":
      self.noise = so_nnx.Sparseout(rate, q, gradient=gradient, record_sparsity=record_sparsity)
    else:
      self.noise = nnx.data(None)
    self.decoder = nnx.Linear(hidden, input_dim, rngs=rngs)

  def encode(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Hidden activations h = ReLU(x W1 + b1); Bridgeout perturbs W1 when ``key`` is given.

    Args:
      x: inputs, shape (batch, input_dim).
      key: noise key, or None for the clean (evaluation) activations.

    Returns:
      h, shape (batch, hidden).
    """
    if self.regularizer == "bridgeout":
      pre = self.encoder(x, deterministic=key is None, rngs=key)
    else:
      pre = self.encoder(x)
    return jax.nn.relu(pre)

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Reconstruction logits and the clean hidden activations.

    Args:
      x: inputs, shape (batch, input_dim), pixel values in [0, 1].
      key: noise key for training; None evaluates without noise.

    Returns:
      ``(logits, h)``: logits (batch, input_dim) and h (batch, hidden) before the noise.
    """
    h = self.encode(x, key)
    noisy = h
    if key is not None and self.noise is not None:
      noisy = self.noise(h, deterministic=False, rngs=key)
    elif getattr(self.noise, "record_sparsity", False):
      self.noise(h, deterministic=True)  # the identity; records the clean h's sparsity
    return self.decoder(noisy), h


def reconstruction_loss(logits: jax.Array, x: jax.Array, kind: str) -> jax.Array:
  """Per-example reconstruction loss.

  ``"mse"``: mean over pixels of (sigmoid(logits) - x)^2; ``"bce"``: mean over pixels of the
  binary cross-entropy of sigmoid(logits) against x in [0, 1].

  Args:
    logits: decoder outputs, (batch, d).
    x: targets in [0, 1], (batch, d).
    kind: ``"mse"`` or ``"bce"``.

  Returns:
    Loss per example, (batch,).
  """
  if kind == "mse":
    return jnp.mean((jax.nn.sigmoid(logits) - x) ** 2, axis=-1)
  if kind == "bce":
    # log sigmoid form: numerically stable for large |logits|.
    return jnp.mean(
      -(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits)), axis=-1
    )
  raise ValueError(f"loss must be 'mse' or 'bce', got {kind!r}")
