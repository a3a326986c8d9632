"""Flax Linen: ``Sparseout``, a drop-in for ``flax.linen.Dropout``, and ``replace_dropout``,
which makes every ``nn.Dropout`` of an unmodified model compute sparseout."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from sparseout_jax import _validate
from sparseout_jax.core import sparseout
from sparseout_jax.records import RECORD_NAME, sparsity_stats

__all__ = ["Sparseout", "replace_dropout"]

_AUTONAME = "Dropout"
_DROPOUT_CALL = inspect.signature(nn.Dropout.__call__)


def _apply(
  module: nn.Module,
  inputs: jax.Array,
  deterministic: bool | None,
  rng: jax.Array | None,
  *,
  rate: Any,
  q: Any,
  broadcast_dims: Sequence[int],
  gradient: str,
  record_sparsity: bool,
) -> jax.Array:
  """The body of a Dropout call, with sparseout: Flax's control flow, key and edge cases."""
  if record_sparsity:
    module.sow("intermediates", RECORD_NAME, sparsity_stats(inputs))
  deterministic = nn.merge_param("deterministic", module.deterministic, deterministic)
  static_rate = not _validate.is_traced(rate)
  if (static_rate and float(rate) == 0.0) or deterministic:
    return inputs
  if static_rate and float(rate) == 1.0:
    return jnp.zeros_like(inputs)
  if rng is None:
    rng = module.make_rng(module.rng_collection)
  return sparseout(
    rng,
    inputs,
    float(rate) if static_rate else rate,
    q if _validate.is_traced(q) else float(q),
    broadcast_dims=tuple(broadcast_dims),
    gradient=gradient,
  )


class Sparseout(nn.Module):
  r"""Sparseout layer for Linen: y = x + sign(x) |x|**(q/2) eta, eta = m/(1-rate) - 1.

  The attributes and call of ``flax.linen.Dropout`` (positional ``rate``,
  ``broadcast_dims``, ``deterministic``, ``rng_collection``), plus the keyword-only
  ``q``, ``gradient`` and ``record_sparsity``. ``deterministic`` is merged with the
  call-time flag (``merge_param``); the key comes from ``make_rng(rng_collection)``
  unless ``rng=`` is given. An unnamed Sparseout in a compact module is auto-named as a
  Dropout would be (``Dropout_0``, ``Dropout_1``, ...), so swapping ``nn.Dropout`` for it
  draws the same key, and at q = 2 its outputs and gradients equal ``nn.Dropout``'s bit
  for bit. ``rate`` and ``q`` may be traced scalars (a schedule passed to the model's
  call). See :func:`sparseout_jax.sparseout`.

  Attributes:
    rate: the DROP probability in [0, 1].
    broadcast_dims: dims that share one mask (variational / locked sparseout).
    deterministic: if True, the layer is the identity.
    rng_collection: the rng collection a key is drawn from.
    q: (keyword-only) the norm, > 0 (2 = dropout).
    gradient: (keyword-only) ``"exact"`` or ``"reference"`` derivative rule.
    record_sparsity: (keyword-only) if True, every call sows ``{"hoyer",
      "zero_fraction"}`` of its input into ``"intermediates"`` as ``"sparsity"``.

  Example:
    >>> import flax.linen as nn
    >>> from sparseout_jax.linen import Sparseout
    >>> layer = Sparseout(0.5, q=2.5)
    >>> y = layer.apply({}, jnp.ones(3), deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> y.shape
    (3,)
  """

  rate: float
  broadcast_dims: Sequence[int] = ()
  deterministic: bool | None = None
  rng_collection: str = "dropout"
  _: dataclasses.KW_ONLY
  q: float = 2.0
  gradient: str = "exact"
  record_sparsity: bool = False

  def __post_init__(self):
    if not _validate.is_traced(self.rate):
      _validate.check_rate(self.rate, "rate")
    if not _validate.is_traced(self.q):
      _validate.check_q(self.q)
    _validate.check_choice(self.gradient, "gradient", _validate.GRADIENT_RULES)
    _claim_dropout_name(self)
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
    return _apply(
      self,
      inputs,
      deterministic,
      rng,
      rate=self.rate,
      q=self.q,
      broadcast_dims=self.broadcast_dims,
      gradient=self.gradient,
      record_sparsity=self.record_sparsity,
    )


def _claim_dropout_name(module: nn.Module) -> None:
  """Gives an unnamed Sparseout in a compact method the next ``Dropout_N`` name.

  Linen names an unnamed submodule after its class; Sparseout takes the name a Dropout in
  its place would get, so that ``make_rng`` folds the same path and draws the same key.
  """
  if module.name is not None:
    return
  parent = module.parent
  if parent is nn.module._unspecified_parent:  # resolved as Linen resolves it
    parent = nn.module._context.module_stack[-1]
  state = getattr(parent, "_state", None)
  if not isinstance(parent, nn.Module) or state is None or state.in_setup:
    return
  cursor = state.autoname_cursor.get(_AUTONAME, 0)
  object.__setattr__(module, "name", f"{_AUTONAME}_{cursor}")
  state.autoname_cursor[_AUTONAME] = cursor + 1


@contextlib.contextmanager
def replace_dropout(
  q: float, *, gradient: str = "exact", record_sparsity: bool = False
) -> Iterator[None]:
  r"""Within this context, every ``nn.Dropout`` call computes sparseout with norm q.

  Each call keeps its Dropout's rate, broadcast dims, deterministic flag and the very key
  the Dropout would have drawn (``make_rng`` from its own path, or its ``rng=``), so at
  q = 2 an unmodified model's outputs and gradients are bit-equal with and without the
  context, whatever its modules are named. Wrap ``init``/``apply`` (or the jitted step's
  trace) in it; it works through ``nn.scan``, ``nn.vmap`` and ``nn.remat``.

  Args:
    q: the norm, > 0.
    gradient: ``"exact"`` or ``"reference"`` derivative rule.
    record_sparsity: also sow each Dropout's input sparsity (see :class:`Sparseout`).

  Yields:
    None.

  Example:
    >>> import flax.linen as nn
    >>> from sparseout_jax.linen import replace_dropout
    >>> model = nn.Dropout(0.5, deterministic=False)
    >>> with replace_dropout(q=1.5):
    ...   y = model.apply({}, jnp.ones(4), rngs={"dropout": jax.random.key(0)})
    >>> y.shape
    (4,)
  """
  q = _validate.check_q(q)
  _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if type(module) is not nn.Dropout or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    bound = _DROPOUT_CALL.bind(module, *args, **kwargs)
    bound.apply_defaults()
    return _apply(
      module,
      bound.arguments["inputs"],
      bound.arguments["deterministic"],
      bound.arguments["rng"],
      rate=module.rate,
      q=q,
      broadcast_dims=module.broadcast_dims,
      gradient=gradient,
      record_sparsity=record_sparsity,
    )

  with nn.intercept_methods(interceptor):
    yield
