"""Flax Linen: ``Sparseout``, a drop-in for ``flax.linen.Dropout``, and ``replace_dropout``,
which makes every ``nn.Dropout`` of an unmodified model compute sparseout."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from sparseout_jax import _validate
from sparseout_jax.attention import linen_dot_product_attention
from sparseout_jax.core import sparseout
from sparseout_jax.records import RECORD_NAME, sparsity_stats

__all__ = ["Sparseout", "attention_fn", "replace_dropout"]

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

  ``q`` is keyword-only: Dropout's second positional argument is ``broadcast_dims``, so
  ``Sparseout(0.5, 1.5)`` raises an error that says to write ``Sparseout(0.5, q=1.5)``
  (NNX's Sparseout takes q second, as its Dropout has no positional ``broadcast_dims``).

  Example:
    >>> import jax, jax.numpy as jnp
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
    if isinstance(self.broadcast_dims, (int, float)):
      raise TypeError(
        f"`broadcast_dims` must be a sequence of ints, got {self.broadcast_dims!r}: in Linen q "
        f"is keyword-only, Sparseout(rate, q={self.broadcast_dims!r})."
      )
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
      deterministic: merged with the attribute ``deterministic`` (``nn.merge_param``):
        exactly one of them must be set.
      rng: a key; by default ``self.make_rng(self.rng_collection)``, which needs
        ``rngs={"dropout": key}`` (or the layer's ``rng_collection``) in ``apply``.

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


def attention_fn(q: float, *, gradient: str = "exact") -> Callable[..., jax.Array]:
  r"""An ``attention_fn`` that applies sparseout, not dropout, to the attention weights.

  Pass it as ``nn.MultiHeadDotProductAttention(..., dropout_rate=r,
  attention_fn=attention_fn(q))``: the layer's rate, key and mask shape are kept, and each
  weight becomes w + w**(q/2) eta (see
  :func:`sparseout_jax.attention.attention_weights_sparseout`). At q = 2 the layer computes
  Flax's attention dropout bit for bit.

  Args:
    q: the norm, > 0 (a number, or a traced scalar made inside the traced function).
    gradient: ``"exact"`` or ``"reference"`` derivative rule.

  Returns:
    :func:`sparseout_jax.attention.linen_dot_product_attention` with q bound.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from sparseout_jax.linen import attention_fn
    >>> layer = nn.MultiHeadDotProductAttention(2, dropout_rate=0.1, deterministic=False,
    ...                                         attention_fn=attention_fn(1.5))
    >>> x = jnp.ones((1, 4, 8))
    >>> params = layer.init(jax.random.key(0), x)
    >>> layer.apply(params, x, rngs={"dropout": jax.random.key(1)}).shape
    (1, 4, 8)
  """
  q = _validate.check_q(q, allow_traced=True)
  _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)
  return functools.partial(linen_dot_product_attention, q=q, gradient=gradient)


class _Swap(NamedTuple):
  """What one ``replace_dropout`` context asks for."""

  q: Any
  gradient: str
  record_sparsity: bool
  attention: bool


# The contexts entered, outermost first. Every interceptor applies the innermost one, so in
# nested contexts the innermost wins, as in any Python scope.
_ACTIVE: contextvars.ContextVar[tuple[_Swap, ...]] = contextvars.ContextVar(
  "sparseout_replace_dropout", default=()
)


def _swap_dropout(swap: _Swap, module: nn.Dropout, args: tuple, kwargs: dict) -> jax.Array:
  """A Dropout call computed as sparseout, with its own arguments, rate and key."""
  bound = _DROPOUT_CALL.bind(module, *args, **kwargs)
  bound.apply_defaults()
  return _apply(
    module,
    bound.arguments["inputs"],
    bound.arguments["deterministic"],
    bound.arguments["rng"],
    rate=module.rate,
    q=swap.q,
    broadcast_dims=module.broadcast_dims,
    gradient=swap.gradient,
    record_sparsity=swap.record_sparsity,
  )


def _swap_attention(swap: _Swap, module: nn.Module, next_fun: Callable, args, kwargs):
  """An attention call with sparseout on its weights: its attention_fn swapped for the call."""
  fn = functools.partial(linen_dot_product_attention, q=swap.q, gradient=swap.gradient)
  object.__setattr__(module, "attention_fn", fn)  # Linen modules are frozen dataclasses
  try:
    return next_fun(*args, **kwargs)
  finally:
    object.__setattr__(module, "attention_fn", nn.dot_product_attention)


@contextlib.contextmanager
def replace_dropout(
  q: float | jax.Array,
  *,
  gradient: str = "exact",
  record_sparsity: bool = False,
  attention: bool = True,
) -> Iterator[None]:
  r"""Within this context, every ``nn.Dropout`` call, and the attention dropout of every
  ``nn.MultiHeadDotProductAttention``, computes sparseout with norm q.

  Each Dropout call keeps its rate, broadcast dims, deterministic flag and the very key the
  Dropout would have drawn (``make_rng`` from its own path, or its ``rng=``). Each attention
  layer with ``dropout_rate > 0`` and Flax's default ``attention_fn`` computes
  :func:`attention_fn` (q) instead: the same rate, key and mask, sparseout on the attention
  weights (``attention=False`` leaves them as dropout). So at q = 2 an unmodified model's
  outputs and gradients are bit-equal with and without the context, whatever its modules
  are named. It works through ``nn.scan``, ``nn.vmap`` and ``nn.remat``. Contexts nest:
  the innermost one applies.

  The context acts while a model is traced, not when a compiled step runs: wrap
  ``init`` / ``apply``, or the jitted step's first call, in it. A step jitted and traced
  before the context keeps computing dropout inside it, and one first traced inside the
  context keeps computing sparseout after it, since ``jax.jit`` reuses its trace. For
  jitted training prefer the NNX path (:func:`sparseout_jax.nnx.replace_dropout`), whose
  replacement is part of the model's state, or the :class:`Sparseout` layer.

  Args:
    q: the norm, > 0. A Python number, or a traced scalar when the context is entered
      inside the traced function (a schedule passed to the jitted step).
    gradient: ``"exact"`` or ``"reference"`` derivative rule.
    record_sparsity: also sow each Dropout's input sparsity (see :class:`Sparseout`).
    attention: also convert the attention dropout of ``nn.MultiHeadDotProductAttention``
      (and its subclasses ``nn.MultiHeadAttention``, ``nn.SelfAttention``).

  Yields:
    None.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from sparseout_jax.linen import replace_dropout
    >>> model = nn.Dropout(0.5, deterministic=False)
    >>> with replace_dropout(q=1.5):
    ...   y = model.apply({}, jnp.ones(4), rngs={"dropout": jax.random.key(0)})
    >>> y.shape
    (4,)
  """
  q = _validate.check_q(q, allow_traced=True)
  _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    swaps = _ACTIVE.get()
    if not swaps or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    swap = swaps[-1]
    if type(module) is nn.Dropout:
      return _swap_dropout(swap, module, args, kwargs)
    if (
      swap.attention
      and isinstance(module, nn.MultiHeadDotProductAttention)
      and module.attention_fn is nn.dot_product_attention
      and module.dropout_rate > 0.0
    ):
      return _swap_attention(swap, module, next_fun, args, kwargs)
    return next_fun(*args, **kwargs)

  token = _ACTIVE.set((*_ACTIVE.get(), _Swap(q, gradient, record_sparsity, attention)))
  try:
    with nn.intercept_methods(interceptor):
      yield
  finally:
    _ACTIVE.reset(token)
