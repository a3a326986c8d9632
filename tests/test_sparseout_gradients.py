"""Sparseout's backward rules: exact = autodiff of the formula; reference = authors' rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparseout_jax import ABS_FLOOR, sparseout

QS = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
KEY = jax.random.key(7)


def _eta(key, shape, p):
  m = jax.random.bernoulli(key, 1.0 - p, shape)
  return np.where(np.asarray(m), p / (1.0 - p), -1.0)


def _x(n=257, seed=0):
  x = np.asarray(jax.random.normal(jax.random.key(seed), (n,)), np.float32) * 2
  return x[np.abs(x) > 1e-2]  # away from 0, where the derivative exists


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("residual", ["mask", "key"])
def test_exact_gradient_is_autodiff_of_the_plain_formula(q, residual):
  p = 0.4
  x = jnp.asarray(_x())
  eta = jnp.asarray(_eta(KEY, x.shape, p), jnp.float32)

  def plain(x):
    return x + jnp.sign(x) * jnp.abs(x) ** (q / 2) * eta

  w = jax.random.normal(jax.random.key(1), x.shape)  # a non-trivial cotangent
  got = jax.grad(lambda x: jnp.vdot(w, sparseout(KEY, x, p, q, residual=residual)))(x)
  want = jax.grad(lambda x: jnp.vdot(w, plain(x)))(x)
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
  # And the forward pass is the plain formula, to float32 rounding (absolute near the
  # cancellation x - |x|**(q/2), relative elsewhere).
  np.testing.assert_allclose(sparseout(KEY, x, p, q), plain(x), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("q", QS)
def test_reference_gradient_is_the_authors_rule(q):
  p = 0.3
  x = _x(seed=3)
  eta = _eta(KEY, x.shape, p)
  got = jax.grad(lambda x: sparseout(KEY, x, p, q, gradient="reference").sum())(jnp.asarray(x))
  a = np.abs(x.astype(np.float64))
  want = 1.0 + a ** (q / 2 - 1) * eta
  np.testing.assert_allclose(got, want, rtol=5e-6, atol=1e-6)  # 1 - (...) cancels near 0


def _summed(key, x, p, q, gradient):
  return sparseout(key, x, p, q, gradient=gradient).astype(jnp.float32).sum()


def test_rules_agree_at_q2_and_differ_elsewhere():
  x = jnp.asarray(_x())
  g = {r: jax.grad(_summed, argnums=1)(KEY, x, 0.5, 2.0, r) for r in ("exact", "reference")}
  np.testing.assert_array_equal(g["exact"], g["reference"])
  g = {r: jax.grad(_summed, argnums=1)(KEY, x, 0.5, 1.5, r) for r in ("exact", "reference")}
  assert not np.allclose(g["exact"], g["reference"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gradient", ["exact", "reference"])
def test_gradient_finite_at_and_near_zero(dtype, gradient):
  tiny = float(jnp.finfo(dtype).tiny)
  vals = [0.0, -0.0, tiny, -tiny, tiny / 4, 1e-30, -1e-20, 1e-8, -1e-4, 1e-2, 1.0, -3.0]
  x = jnp.asarray(vals, jnp.float32).astype(dtype)
  for q in QS:
    for p in (0.1, 0.5, 0.99):
      y = sparseout(KEY, x, p, q, gradient=gradient)
      g = jax.grad(_summed, argnums=1)(KEY, x, p, q, gradient)
      assert g.dtype == dtype and y.dtype == dtype
      assert bool(jnp.isfinite(g).all()), (q, p, g)
      assert bool(jnp.isfinite(y).all()), (q, p, y)
      assert bool((y[:2] == 0).all())  # y = 0 at x = +-0


def test_gradient_at_zero_is_the_floored_formula():
  """At x = 0 the backward pass uses |x| = ABS_FLOOR (the documented choice)."""
  p, q = 0.5, 1.0
  x = jnp.zeros(64)
  g = jax.grad(lambda x: sparseout(KEY, x, p, q).sum())(x)
  eta = _eta(KEY, x.shape, p)
  np.testing.assert_allclose(g, 1 + (q / 2) * ABS_FLOOR ** (q / 2 - 1) * eta, rtol=1e-6)


def test_half_precision_is_computed_in_float32():
  x32 = jnp.asarray(_x(seed=5))
  for dtype in (jnp.bfloat16, jnp.float16):
    xh = x32.astype(dtype)
    y = sparseout(KEY, xh, 0.5, 1.5)
    want = sparseout(KEY, xh.astype(jnp.float32), 0.5, 1.5).astype(dtype)
    # Two programs compute the float32 value; if XLA fuses them differently, one rounding to
    # the half type may land one ulp apart, so allow one ulp of the half type.
    np.testing.assert_allclose(
      np.asarray(y, np.float32), np.asarray(want, np.float32), rtol=float(jnp.finfo(dtype).eps)
    )
