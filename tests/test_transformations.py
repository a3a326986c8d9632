"""Forward mode, higher order, the key-reuse checker, export and schedules (traced p, q)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparseout_jax import ABS_FLOOR, embedding_sparseout, sparseout
from sparseout_jax.nnx import Sparseout

KEY = jax.random.key(3)
X = jnp.array([[-2.0, -0.7, 0.0, 0.3, 1.1, 2.5], [0.05, -0.05, 4.0, -3.0, 1e-14, -1.0]])
P_DROP = 0.4


def _mask(key=KEY, shape=X.shape, p=P_DROP):
  return jax.random.bernoulli(key, 1.0 - p, shape)


def _dydx(x, q, gradient):
  """The derivative rule written out: 1 + c |x|**(q/2-1) eta, |x| floored."""
  eta = jnp.where(_mask(), P_DROP / (1 - P_DROP), -1.0)
  c = q / 2 if gradient == "exact" else 1.0
  return 1.0 + c * jnp.maximum(jnp.abs(x), ABS_FLOOR) ** (q / 2 - 1) * eta


@pytest.mark.parametrize("q", [1.0, 1.5, 2.0, 2.5, 3.0])
@pytest.mark.parametrize("gradient", ["exact", "reference"])
@pytest.mark.parametrize("residual", ["mask", "key"])
def test_forward_mode_equals_reverse_mode_and_the_rule(q, gradient, residual):
  def f(x):
    return sparseout(KEY, x, P_DROP, q, gradient=gradient, residual=residual)

  t = jnp.cos(X)
  rev = jax.vjp(f, X)[1](t)[0]
  fwd = jax.jvp(f, (X,), (t,))[1]
  lin = jax.linearize(f, X)[1](t)
  want = t * (_dydx(X, q, gradient) if q != 2.0 else _mask() / (1 - P_DROP))
  # atol: at x = 0.3, q = 1.5 the rule is 1 - 0.75 * 0.3**-0.25 = -0.013, a cancellation that
  # turns one float32 rounding of the power (the GPU's differs from the CPU's) into 1e-5 relative.
  for got in (rev, fwd, lin):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=5e-7)
  jac = jax.jacfwd(f)(X[0])
  np.testing.assert_allclose(
    np.diag(np.asarray(jac)), np.asarray(want[0] / t[0]), rtol=2e-6, atol=5e-7
  )


@pytest.mark.parametrize("q", [1.5, 3.0])
def test_hessian_is_the_derivative_of_the_rule(q):
  x = X[0][jnp.abs(X[0]) > 0.1]
  mask = _mask(shape=x.shape)

  def total(x):
    return jnp.sum(sparseout(KEY, x, P_DROP, q))

  eta = jnp.where(mask, P_DROP / (1 - P_DROP), -1.0)
  # d/dx of (q/2) |x|**(q/2-1) eta = (q/2)(q/2-1) sign(x) |x|**(q/2-2) eta
  want = (q / 2) * (q / 2 - 1) * jnp.sign(x) * jnp.abs(x) ** (q / 2 - 2) * eta
  got = jax.hessian(total)(x)
  np.testing.assert_allclose(np.diag(np.asarray(got)), np.asarray(want), rtol=1e-5)
  assert np.count_nonzero(np.asarray(got) - np.diag(np.diag(np.asarray(got)))) == 0


def test_jacfwd_of_embedding_and_layer():
  table = jnp.arange(12.0).reshape(4, 3) - 5.0
  ids = jnp.array([0, 2, 2])
  jf = jax.jacfwd(lambda t: embedding_sparseout(KEY, t, ids, 0.5, 1.5))(table)
  jr = jax.jacrev(lambda t: embedding_sparseout(KEY, t, ids, 0.5, 1.5))(table)
  np.testing.assert_allclose(np.asarray(jf), np.asarray(jr), rtol=1e-6)
  layer = Sparseout(0.5, q=2.5, rngs=nnx.Rngs(dropout=0))
  x = jnp.linspace(-1, 1, 6)
  jf = jax.jacfwd(lambda x: layer(x, rngs=KEY))(x)
  jr = jax.jacrev(lambda x: layer(x, rngs=KEY))(x)
  # Forward and reverse mode apply the same diagonal rule in different programs: rounding apart.
  np.testing.assert_allclose(np.asarray(jf), np.asarray(jr), rtol=1e-6, atol=0)


@pytest.mark.parametrize("residual", ["mask", "key"])
@pytest.mark.parametrize("q", [2.0, 1.5])
def test_key_reuse_checker_is_clean(residual, q):
  with jax.debug_key_reuse(True):
    k1, k2 = jax.random.key(10), jax.random.key(11)  # each consumed once
    g = jax.grad(lambda x: jnp.sum(jnp.sin(sparseout(k1, x, 0.3, q, residual=residual))))(X)
    gj = jax.jit(jax.grad(lambda x, k: jnp.sum(sparseout(k, x, 0.3, q, residual=residual))))(X, k2)
  assert np.isfinite(np.asarray(g)).all() and np.isfinite(np.asarray(gj)).all()


def test_export_round_trip():
  from jax import export

  f = jax.jit(lambda k, x: sparseout(k, x, 0.5, 1.5))
  exported = export.export(f)(KEY, X)
  assert exported.out_avals[0].shape == X.shape
  # The exported module is compiled anew on the way back: equal to float32 rounding.
  np.testing.assert_allclose(
    np.asarray(exported.call(KEY, X)), np.asarray(f(KEY, X)), rtol=1e-6, atol=0
  )
  # With the derivative exported too (vjp_order=1), the gradient of the exported function is ours.
  grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(sparseout(KEY, x, 0.5, 1.5)))))
  exported = export.export(grad)(X)
  want = jax.grad(lambda x: jnp.sum(jnp.sin(sparseout(KEY, x, 0.5, 1.5))))(X)
  # The exported program is compiled apart, so its fusion (and rounding) may differ (atol: see above).
  np.testing.assert_allclose(np.asarray(exported.call(X)), np.asarray(want), rtol=1e-6, atol=5e-7)


@pytest.mark.parametrize("q", [1.5, 2.0, 2.5])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_traced_p_and_q_match_the_static_path(p, q):
  f = jax.jit(lambda k, x, p, q: sparseout(k, x, p, q))
  static = sparseout(KEY, X, p, q)
  traced = f(KEY, X, p, q)
  np.testing.assert_allclose(np.asarray(traced), np.asarray(static), rtol=1e-6, atol=1e-7)
  gs = jax.grad(lambda x: jnp.vdot(jnp.cos(X), sparseout(KEY, x, p, q)))(X)
  gt = jax.jit(jax.grad(lambda x, p, q: jnp.vdot(jnp.cos(X), sparseout(KEY, x, p, q))))(X, p, q)
  np.testing.assert_allclose(np.asarray(gt), np.asarray(gs), rtol=1e-5, atol=1e-6)
  assert np.isfinite(np.asarray(gt)).all()


@pytest.mark.parametrize(("p", "q"), [(-0.1, 1.5), (1.2, 1.5), (0.5, 0.0), (0.5, -1.0)])
def test_traced_invalid_values_give_nan_not_a_silent_answer(p, q):
  y = jax.jit(lambda p, q: sparseout(KEY, X, p, q))(p, q)
  assert np.isnan(np.asarray(y)).all()


def test_schedule_runs_in_one_compiled_step():
  """q and p as nnx.Variables set inside the step: one compilation for every value."""
  model = nnx.Sequential(
    nnx.Linear(6, 6, rngs=nnx.Rngs(0)),
    Sparseout(nnx.Variable(jnp.float32(0.5)), q=nnx.Variable(jnp.float32(2.0)), rngs=nnx.Rngs(1)),
  )

  traces = []

  @nnx.jit
  def step(model, x, p, q):
    traces.append(1)  # runs once per compilation
    model.layers[1].rate.set_value(p)
    model.layers[1].q.set_value(q)
    return jnp.sum(model(x) ** 2)

  outs = [
    step(model, X, jnp.float32(p), jnp.float32(q)) for p, q in [(0.5, 2.0), (0.4, 1.5), (0.2, 3.0)]
  ]
  assert len({float(o) for o in outs}) == 3
  assert len(traces) == 1
  assert float(model.layers[1].q.get_value()) == 3.0
