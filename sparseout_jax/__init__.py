"""Sparseout for JAX and Flax: dropout generalised by a norm q that sets activation sparsity.

``sparseout(rng, x, p, q)`` is the function; ``sparseout_jax.nnx.Sparseout`` and
``sparseout_jax.linen.Sparseout`` are drop-in replacements for Flax's ``Dropout``, and each
module's ``replace_dropout`` puts Sparseout into an existing model.
"""

from sparseout_jax.core import (
  ABS_FLOOR,
  CHECKPOINT_NAME,
  MASK_NAME,
  remat_policy,
  sparseout,
  sparseout_with_mask,
)
from sparseout_jax.hoyer import hoyer_sparsity
from sparseout_jax.records import sparsity_records, sparsity_stats
from sparseout_jax.variants import bridgeout_dense, embedding_sparseout, weight_sparseout

__all__ = [
  "ABS_FLOOR",
  "CHECKPOINT_NAME",
  "MASK_NAME",
  "bridgeout_dense",
  "embedding_sparseout",
  "hoyer_sparsity",
  "remat_policy",
  "sparseout",
  "sparseout_with_mask",
  "sparsity_records",
  "sparsity_stats",
  "weight_sparseout",
]
__version__ = "0.1.0"
