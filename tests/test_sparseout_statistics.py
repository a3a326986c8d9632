"""Sparseout's moments over many keys: E[y] = x and Var[y] = |x|**q p / (1 - p)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparseout_jax import sparseout

N_KEYS = 40_000
Z = 5.0  # a 5-sigma bound: a false alarm about once in 1.7 million per compared number
X = np.array([-3.0, -1.0, -0.3, -0.01, 0.0, 0.02, 0.5, 1.0, 2.5], np.float32)


def _draws(p: float, q: float) -> np.ndarray:
  keys = jax.random.split(jax.random.key(1234), N_KEYS)
  f = jax.jit(jax.vmap(lambda k: sparseout(k, jnp.asarray(X), p, q)))
  return np.asarray(f(keys), np.float64)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("q", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
def test_mean_and_variance_match_the_formula(p, q):
  y = _draws(p, q)
  k = 1.0 - p
  a = np.abs(X.astype(np.float64))
  var = a**q * p / k
  # Moments of eta (= p/k w.p. k, -1 w.p. p): E[eta^4] gives the spread of the sample variance.
  e4 = k * (p / k) ** 4 + p
  mean_se = np.sqrt(var / N_KEYS)
  var_se = np.sqrt(np.maximum(a ** (2 * q) * e4 - var**2, 0.0) / N_KEYS)
  # The sample variance also moves by (mean error)**2, a second-order term that dominates
  # when eta is +-1 (p = 0.5) and the first-order spread vanishes.
  var_bound = Z * var_se + Z**2 * var / N_KEYS
  np.testing.assert_array_less(np.abs(y.mean(0) - X), Z * mean_se + 1e-6)
  np.testing.assert_array_less(np.abs(y.var(0) - var), var_bound + 1e-6)


def test_zero_stays_zero_and_sign_is_kept_by_the_kept_units():
  y = _draws(0.5, 1.5)
  assert np.all(y[:, X == 0] == 0)
  # A kept unit moves away from 0 on its own side: sign(y) = sign(x) where the mask is 1.
  kept = y * np.sign(X) > np.abs(X)
  assert np.all(np.sign(y[kept[:, :]]) == np.sign(np.broadcast_to(X, y.shape)[kept]))


def test_q2_is_inverted_dropout_for_negative_inputs_too():
  y = _draws(0.5, 2.0)
  assert set(np.unique(np.round(y / X[None, X != 0][:, :1], 5)[:, 0])) <= {0.0, 2.0}
  ratios = y[:, X != 0] / X[X != 0]
  assert np.all(np.isclose(ratios, 0.0) | np.isclose(ratios, 2.0))
