"""The train step every program shares: per-device noise key, gradients, pmean, update, finite check.

A program's state is one pytree (a dict) with at least ``params``, ``opt_state`` and ``step`` (an
int32 scalar, the optimizer steps done); anything else in it (BatchNorm statistics, an LSTM's
carry) is what the program's loss returns as its new value. :func:`make_train_step` builds
``step(state, batch, key) -> (state, metrics)`` from a program's loss; :func:`pmap_train_step`
maps it over the local devices. With ``skip_nonfinite`` the optimizer is wrapped in
``optax.apply_if_finite`` (by :func:`optimizer`) and the rest of the state is kept as it was by
:func:`train.common.guard.select_tree`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from train.common import guard, parallel

PyTree = Any
# apply_if_finite gives up skipping after this many consecutive non-finite steps; a run told to skip
# never gives up (it is stopped by the user, or its metrics show the skipped steps growing).
_NEVER = 2**31 - 1


def optimizer(
  tx: optax.GradientTransformation, skip_nonfinite: bool
) -> optax.GradientTransformation:
  """``tx``, or ``optax.apply_if_finite(tx)`` that drops every update whose gradients are not finite.

  Stop mode keeps ``tx`` itself: apply_if_finite's ``lax.cond`` changes XLA's fusion and so the last
  bits of the update, and a run that stops on a non-finite step needs no skipping.

  Example:
    >>> tx = optimizer(optax.sgd(0.1), skip_nonfinite=True)
    >>> type(tx.init({"w": jax.numpy.zeros(2)})).__name__
    'ApplyIfFiniteState'
  """
  return optax.apply_if_finite(tx, _NEVER) if skip_nonfinite else tx


def inner_opt_state(opt_state: PyTree) -> PyTree:
  """The wrapped optimizer's state without apply_if_finite's counters (what checkpoints hold).

  So a checkpoint written with ``skip_nonfinite`` off resumes with it on, and the reverse.
  """
  if isinstance(opt_state, optax.ApplyIfFiniteState):
    return opt_state.inner_state
  return opt_state


def wrap_opt_state(template: PyTree, inner: PyTree, skipped: int) -> PyTree:
  """Put a checkpoint's optimizer state back in the layout of ``template`` (see :func:`inner_opt_state`)."""
  if not isinstance(template, optax.ApplyIfFiniteState):
    return inner
  return template._replace(
    total_notfinite=template.total_notfinite * 0 + skipped, inner_state=inner
  )


def make_train_step(
  loss_fn: Callable[..., tuple[jax.Array, tuple[dict, dict]]],
  tx: optax.GradientTransformation,
  *,
  skip_nonfinite: bool,
  update_scale: Callable[[dict], jax.Array] | None = None,
  after_update: Callable[[dict], dict] | None = None,
  grad_norm: bool = False,
) -> Callable[[dict, dict, jax.Array], tuple[dict, dict]]:
  """The shared step: ``g = mean over devices of grad loss``, ``params += tx(g)``, finite check.

  Device d at step s draws its noise from ``fold_in(fold_in(key, s), d)``.

  Args:
    loss_fn: ``(params, state, batch, key) -> (loss, (metrics, new_entries))``: the scalar loss on
      this device's batch, extra scalar metrics, and the new values of state entries other than
      params/opt_state/step (e.g. ``{"batch_stats": ...}``).
    tx: the optimizer (from :func:`optimizer`).
    skip_nonfinite: keep ``new_entries`` as they were on a non-finite step.
    update_scale: optional ``batch -> scalar`` multiplying the optimizer's updates (AWD-LSTM's
      ``lr * seq_len / bptt``).
    after_update: optional ``state -> state`` run after the update (e.g. parameter averaging).
    grad_norm: also return the global norm of the averaged gradients (off by default: one more
      consumer of the gradients can change how XLA fuses the update, and with it the last bits).

  Returns:
    ``step(state, batch, key) -> (state, metrics)``, to run under ``pmap`` (axis ``parallel.AXIS``);
    metrics hold ``loss``, the loss's extra metrics, ``ok`` (all finite) and maybe ``grad_norm``.
  """

  def step(state, batch, key):
    dkey = parallel.device_key(jax.random.fold_in(key, state["step"]))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (metrics, entries)), grads = grad_fn(state["params"], state, batch, dkey)
    loss, metrics, grads = parallel.pmean((loss, metrics, grads))
    ok = guard.all_finite((loss, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    if update_scale is not None:
      scale = update_scale(batch)
      updates = jax.tree.map(lambda u: u * scale, updates)
    if skip_nonfinite:
      entries = guard.select_tree(ok, entries, {k: state[k] for k in entries})
    new = {
      **state,
      **entries,
      "params": optax.apply_updates(state["params"], updates),
      "opt_state": opt_state,
      "step": state["step"] + 1,
    }
    if after_update is not None:
      new = after_update(new)
    if grad_norm:
      metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return new, {"loss": loss, **metrics, "ok": ok}

  return step


def pmap_train_step(step: Callable, devices: list[jax.Device] | None = None) -> Callable:
  """``jax.pmap`` of a step over the local devices: state and batch per device, one shared key.

  The state is donated (its buffers are reused for the new state).
  """
  return jax.pmap(
    step, axis_name=parallel.AXIS, in_axes=(0, 0, None), donate_argnums=(0,), devices=devices
  )
