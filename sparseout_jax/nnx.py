"""Flax NNX layers: ``Sparseout`` (a drop-in for ``nnx.Dropout``), ``BridgeoutLinear``,
``attention_fn`` (sparseout on attention weights), and ``replace_dropout``, which puts
Sparseout into an existing model without editing its code."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, MutableMapping, MutableSequence, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import filterlib, rnglib
from flax.nnx.module import first_from
from flax.nnx.nn import attention as nnx_attention

from sparseout_jax import _validate
from sparseout_jax import attention as _attention
from sparseout_jax.core import sparseout
from sparseout_jax.records import RECORD_NAME, sparsity_stats
from sparseout_jax.variants import bridgeout_dense

__all__ = ["BridgeoutLinear", "SparseoutAttention", "Sparseout", "attention_fn", "replace_dropout"]

_NO_DETERMINISTIC = (
  "No `deterministic` argument was provided to {name}. Consider one of the following options:\n"
  "1. Pass `deterministic` to the constructor: {name}(..., deterministic=True/False)\n"
  "2. Pass `deterministic` to __call__: layer(x, deterministic=True/False)\n"
  "3. Use `model.train()` / `model.eval()`, or `nnx.view` for a view of the model with a "
  "specific value: nnx.view(model, deterministic=True/False)"
)


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
    return _validate.check_key(rngs, "rngs")
  raise TypeError(f"rngs must be a Rngs, RngStream or jax.Array, but got {type(rngs)}.")


def _deterministic(layer: nnx.Module, deterministic: bool | None) -> bool:
  name = type(layer).__name__
  return first_from(
    deterministic, layer.deterministic, error_msg=_NO_DETERMINISTIC.format(name=name)
  )


def _hyper(value: Any) -> Any:
  """A hyperparameter's value for this call: a Python float, or the array an nnx.Variable holds."""
  return value.get_value() if isinstance(value, nnx.Variable) else value


def _checked(value: Any, check) -> Any:
  """Validates a number, or an nnx.Variable's value where it is concrete; returns ``value``.

  A Variable may hold one value per stacked layer (shape (L,), for ``nnx.scan``); each is
  checked. Under the scan, each layer's call sees its own scalar.
  """
  inner = _hyper(value)
  if isinstance(value, nnx.Variable):
    if not _validate.is_traced(inner):
      for v in np.ravel(np.asarray(inner)):
        check(float(v))
    return value
  return check(value)


class Sparseout(nnx.Dropout):
  r"""Sparseout layer: y = x + sign(x) |x|**(q/2) eta, eta = m/(1-rate) - 1 (paper 3).

  A drop-in replacement for ``flax.nnx.Dropout`` with one more number, ``q``: the same
  constructor and call-time ``deterministic`` / ``rngs`` semantics, ``model.train()`` /
  ``model.eval()`` and ``nnx.view`` included; at q = 2 its outputs and gradients equal
  ``nnx.Dropout``'s bit for bit. E[y] = x and Var[y] = |x|**q rate / (1 - rate);
  q < 2 makes activations sparser, q > 2 denser. See :func:`sparseout_jax.sparseout`.

  For a schedule, give ``rate`` or ``q`` as an ``nnx.Variable`` holding a scalar and set
  its value inside the training step: one compiled step serves every value.

  Args:
    rate: the DROP probability in [0, 1], a number or an ``nnx.Variable``.
    q: the norm, > 0 (2 = dropout), a number or an ``nnx.Variable``.
    broadcast_dims: dims that share one mask (variational / locked sparseout).
    deterministic: if True, the layer is the identity.
    rng_collection: the rng collection a key is drawn from.
    gradient: ``"exact"`` or ``"reference"`` derivative rule.
    record_sparsity: if True, every call sows ``{"hoyer", "zero_fraction"}`` of its input
      as an ``nnx.Intermediate`` named ``"sparsity"`` (read them with
      :func:`sparseout_jax.sparsity_records`); if False it costs nothing. Call the model
      under ``nnx.capture(model, nnx.Intermediate)``, in a training step too: outside it,
      Flax's (deprecated) ``sow`` appends a record to the layer on every call, which
      changes the model's state, so ``nnx.jit`` retraces every step.
    rngs: an ``nnx.Rngs`` or ``RngStream`` (forked, as ``nnx.Dropout`` does), or None.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from sparseout_jax.nnx import Sparseout
    >>> layer = Sparseout(0.5, q=1.5, rngs=nnx.Rngs(dropout=0))
    >>> layer(jnp.ones((2, 3))).shape
    (2, 3)
  """

  def __init__(
    self,
    rate: float | nnx.Variable,
    q: float | nnx.Variable = 2.0,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    gradient: str = "exact",
    record_sparsity: bool = False,
    rngs: rnglib.Rngs | rnglib.RngStream | None = None,
  ):
    super().__init__(
      _checked(rate, lambda r: _validate.check_rate(r, "rate")),
      broadcast_dims=broadcast_dims,
      deterministic=deterministic,
      rng_collection=rng_collection,
      rngs=rngs,
    )
    self.q = _checked(q, _validate.check_q)
    self.gradient = _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)
    self.record_sparsity = bool(record_sparsity)

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
      deterministic: overrides the constructor's flag (and ``model.train()`` /
        ``model.eval()``); if neither is set, an error says how to set it.
      rngs: a key, RngStream or Rngs; overrides the constructor's stream. Either this or
        the constructor's ``rngs`` must give a key when not deterministic.

    Returns:
      The perturbed inputs (zeros when rate == 1).
    """
    if self.record_sparsity:
      self.sow(nnx.Intermediate, RECORD_NAME, sparsity_stats(inputs))
    rate, q = _hyper(self.rate), _hyper(self.q)
    if not _validate.is_traced(rate) and float(rate) == 0.0:
      return inputs
    if _deterministic(self, deterministic):
      return inputs
    if not _validate.is_traced(rate) and float(rate) == 1.0:
      return jnp.zeros_like(inputs)
    return sparseout(
      _key_from(self, rngs),
      inputs,
      rate,
      q,
      broadcast_dims=self.broadcast_dims,
      gradient=self.gradient,
    )


class SparseoutAttention(nnx.Module):
  r"""An ``attention_fn`` for ``nnx.MultiHeadAttention``: sparseout on the attention weights.

  Called as Flax's ``nnx.dot_product_attention`` is; computes
  :func:`sparseout_jax.attention.dot_product_attention` with this module's q. A module
  rather than a function so that q may be an ``nnx.Variable`` (a schedule; one value per
  stacked layer under ``nnx.scan``) that NNX carries as state. Made by :func:`attention_fn`.

  Args:
    q: the norm, > 0 (2 = Flax's attention dropout, bit for bit), a number or an
      ``nnx.Variable``.
    gradient: ``"exact"`` or ``"reference"`` derivative rule.
  """

  def __init__(self, q: float | nnx.Variable, *, gradient: str = "exact"):
    self.q = _checked(q, _validate.check_q)
    self.gradient = _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)

  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array, *args, **kwargs):
    """Attention of ``query`` over ``key`` and ``value``; the other arguments as Flax's."""
    return _attention.dot_product_attention(
      query, key, value, *args, q=_hyper(self.q), gradient=self.gradient, **kwargs
    )


def attention_fn(q: float | nnx.Variable, *, gradient: str = "exact") -> SparseoutAttention:
  r"""An ``attention_fn`` that applies sparseout, not dropout, to the attention weights.

  Pass it as ``nnx.MultiHeadAttention(..., dropout_rate=r, attention_fn=attention_fn(q))``:
  the layer's rate, key and mask shape are kept, and each weight becomes
  w + w**(q/2) eta (see :func:`sparseout_jax.attention.attention_weights_sparseout`). At
  q = 2 the layer computes Flax's attention dropout bit for bit.

  Args:
    q: the norm, > 0, a number or an ``nnx.Variable``.
    gradient: ``"exact"`` or ``"reference"`` derivative rule.

  Returns:
    A :class:`SparseoutAttention` module, callable as Flax's ``dot_product_attention``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from sparseout_jax.nnx import attention_fn
    >>> layer = nnx.MultiHeadAttention(2, 8, dropout_rate=0.1, decode=False,
    ...                                attention_fn=attention_fn(1.5), rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 4, 8)), deterministic=False).shape
    (1, 4, 8)
  """
  return SparseoutAttention(q, gradient=gradient)


def _selector(only: Any) -> Callable[[tuple, Any], bool]:
  """(path, node) -> bool for ``only``: a path substring, a predicate or any NNX filter."""
  if isinstance(only, str):
    return lambda path, node: only in "/".join(map(str, path))
  return filterlib.to_predicate(only)


def _stack_shape(node: nnx.Module) -> tuple[int, ...]:
  """The layer axes of a module made under ``nnx.vmap``: its own rng stream's key shape.

  A stream made outside any vmap holds one key (shape ()); one made by ``nnx.vmap`` over
  L layers holds L. A module without a stream gives () (its stacking cannot be seen).
  """
  rngs = getattr(node, "rngs", None)
  if isinstance(rngs, rnglib.RngStream):
    return tuple(jnp.shape(rngs.key.get_value()))
  return ()


def _fit_to_stack(q: Any, shape: tuple[int, ...], path: tuple) -> None:
  """Makes a Variable q fit a layer stacked with ``shape``: a scalar is broadcast in place.

  ``nnx.scan`` / ``nnx.vmap`` over a stack split every Variable of its layers along the
  layer axis, so a value shared by all layers is stored once per layer; the Variable stays
  the one object every replaced layer holds, so setting ``q[...] = v`` sets every layer.
  """
  if not isinstance(q, nnx.Variable):
    return
  have = tuple(jnp.shape(q.get_value()))
  if have == shape:
    return
  if have == () and shape:
    q.set_value(jnp.broadcast_to(q.get_value(), shape) + 0)
    return
  where = "/".join(map(str, path))
  raise ValueError(
    f"`q` holds shape {have}, but the layer at {where!r} is stacked with shape {shape}: give a "
    f"scalar Variable (shared) or one value per layer of shape {shape}, one Variable per stack."
  )


def replace_dropout(
  model: nnx.Module,
  q: float | nnx.Variable,
  *,
  gradient: str = "exact",
  record_sparsity: bool = False,
  only: str | filterlib.Filter = ...,
  attention: bool = True,
) -> int:
  r"""Puts sparseout with norm q, in place, wherever a model drops: its ``nnx.Dropout`` layers
  and the attention dropout of its ``nnx.MultiHeadAttention`` layers.

  Each Dropout becomes a :class:`Sparseout` that keeps its rate, broadcast dims,
  deterministic flag, rng collection and rng stream (the same stream object, not a fork).
  Each ``nnx.MultiHeadAttention`` with ``dropout_rate > 0`` and Flax's default
  ``attention_fn`` gets :func:`attention_fn` (q): the same rate, key and mask, sparseout
  on the attention weights (``attention=False`` leaves them as dropout). So at q = 2 the
  model's outputs and gradients are bit-equal before and after. A Dropout shared by
  several parents is replaced by one Sparseout everywhere. Existing Sparseout layers are
  left alone.

  Stacked layers (made by ``nnx.vmap``, run by ``nnx.scan``) are replaced as one layer.
  A Variable q may then be one value per layer (shape (L,)) or a scalar shared by all: a
  scalar Variable is broadcast in place to (L,), because the scan splits every Variable of
  the stack along its layer axis; set it with ``q[...] = value``. The stack is recognised
  by the layer's own rng stream (made under the vmap); a layer without one needs q of
  shape (L,).

  Args:
    model: any NNX module (graph); changed in place.
    q: the norm, > 0, for every replaced layer (a number or an ``nnx.Variable``).
    gradient: ``"exact"`` or ``"reference"`` derivative rule.
    record_sparsity: passed to every new Sparseout layer.
    only: which layers to replace (default: all). A string selects the layers whose
      "/"-joined path contains it (``only="mlp"``); a callable ``(path, module) -> bool``
      or any other NNX filter is applied to (path, layer). A filter that selects nothing
      raises ``ValueError``; a model with nothing to replace (and no filter) warns.
    attention: also convert the attention dropout of ``nnx.MultiHeadAttention``.

  Returns:
    How many layers were converted (Dropouts plus attention layers).

  Example:
    >>> from flax import nnx
    >>> from sparseout_jax.nnx import replace_dropout
    >>> model = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)),
    ...                        nnx.Dropout(0.1, rngs=nnx.Rngs(1)))
    >>> replace_dropout(model, q=1.5)
    1
    >>> type(model.layers[1]).__name__
    'Sparseout'
  """
  q = _checked(q, _validate.check_q)
  _validate.check_choice(gradient, "gradient", _validate.GRADIENT_RULES)
  select = _selector(only)
  new: dict[int, Sparseout] = {}
  attn: dict[int, tuple[tuple, nnx.MultiHeadAttention]] = {}
  sites = []
  for path, node in nnx.iter_graph(model):
    is_attn = (
      attention
      and isinstance(node, nnx.MultiHeadAttention)
      and node.attention_fn is nnx_attention.dot_product_attention
      and node.dropout_rate > 0.0
    )
    if type(node) is nnx.Dropout or is_attn:
      sites.append("/".join(map(str, path)))
    if not select(path, node) or id(node) in new or id(node) in attn:
      continue
    if is_attn:
      _fit_to_stack(q, _stack_shape(node), path)
      attn[id(node)] = (path, node)
    elif type(node) is nnx.Dropout:
      _fit_to_stack(q, _stack_shape(node), path)
      layer = Sparseout(
        node.rate,
        q,
        broadcast_dims=node.broadcast_dims,
        deterministic=node.deterministic,
        rng_collection=node.rng_collection,
        gradient=gradient,
        record_sparsity=record_sparsity,
      )
      layer.rngs = node.rngs  # the same stream: the keys Dropout would have drawn
      new[id(node)] = layer
  if isinstance(model, nnx.Dropout) and id(model) in new:
    raise TypeError("replace_dropout changes a model in place; pass the module that holds it.")
  if not new and not attn:
    if only is not ...:
      raise ValueError(
        f"`only`={only!r} selects none of the model's dropout sites {sites[:6]}: give a "
        f"substring of one of these paths or a predicate (path, module) -> bool."
      )
    warnings.warn(
      "replace_dropout: the model has no nnx.Dropout or attention dropout.", stacklevel=2
    )
  for _, node in attn.values():
    node.attention_fn = nnx.data(attention_fn(q, gradient=gradient))  # a module: q may be state
  for _, parent in list(nnx.iter_graph(model)):
    if not isinstance(parent, nnx.Module):
      continue
    for key, child in list(nnx.iter_children(parent)):
      if id(child) in new:
        if isinstance(parent, (MutableSequence, MutableMapping)):
          parent[key] = new[id(child)]
        else:
          setattr(parent, key, new[id(child)])
  return len(new) + len(attn)


class BridgeoutLinear(nnx.Module):
  r"""A linear layer with Bridgeout on its kernel: y_b = x_b (W + |W|**(q/2) eta_b) + b.

  Each example b gets its own (in, out) weight mask when ``per_example`` (the paper's
  slow baseline; cost and memory grow as batch x in x out), else one per call. Evaluation
  (``deterministic``) uses W. See :func:`sparseout_jax.bridgeout_dense`.

  Args:
    in_features: input width.
    out_features: output width.
    rate: the drop probability in [0, 1], a Python number (not a Variable or traced value,
      as :func:`sparseout_jax.bridgeout_dense`).
    q: the norm, > 0, a Python number.
    per_example: one weight mask per example (default) or per batch.
    use_bias: add a bias.
    deterministic: if True, no noise.
    rng_collection: the rng collection the noise keys come from.
    rngs: ``nnx.Rngs`` for the parameters and the noise.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from sparseout_jax.nnx import BridgeoutLinear
    >>> layer = BridgeoutLinear(3, 2, 0.5, 1.5, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 3))).shape
    (4, 2)
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
    """Applies the (noisy) linear map to x of shape (batch, in_features).

    Args:
      x: inputs, (batch, in_features).
      deterministic: overrides the constructor's flag (and ``model.train()`` / ``eval()``).
      rngs: a key, RngStream or Rngs; overrides the constructor's stream.

    Returns:
      (batch, out_features).
    """
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


def _show_init_signature(*classes: type) -> None:
  """Gives each class its ``__init__``'s signature, which documentation tools show.

  NNX modules are made by a metaclass whose ``__call__`` takes ``(*args, **kwargs)``, so
  without this a class would be documented with that signature.
  """
  for cls in classes:
    sig = inspect.signature(cls.__init__)
    params = list(sig.parameters.values())[1:]  # without self
    cls.__signature__ = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)


_show_init_signature(Sparseout, SparseoutAttention, BridgeoutLinear)
