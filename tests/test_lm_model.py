"""AWD-style LSTM LM (models/lstm_lm.py): masks, q = 2 equals Flax Dropout, fast paths agree."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import lstm_lm as lm

V, E, H, T, B = 50, 8, 12, 6, 5


def _model(reg, layers=3, **kw):
  return lm.LSTMLM(V, E, H, layers, reg, rngs=nnx.Rngs(0), **kw)


def _ids(seed=0, t=T, b=B):
  return jax.random.randint(jax.random.key(seed), (t, b), 0, V)


def _only(site, rate, q):
  return dataclasses.replace(lm.Regularisation.off(), **{f"rate_{site}": rate, f"q_{site}": q})


def _eta(x, y, q):
  """Recover eta from y = x + sign(x)|x|^(q/2) eta (x != 0)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return (y - x) / (np.sign(x) * np.abs(x) ** (q / 2))


@pytest.mark.parametrize("q", [2.0, 1.5, 2.5])
def test_locked_output_mask_shared_over_time_distinct_over_streams_and_calls(q):
  rate = 0.5
  m = _model(_only("o", rate, q))
  carry = m.init_carry(B)
  _, _, aux = m(_ids(), carry, key=jax.random.key(1))
  eta = _eta(aux["raw"], aux["dropped"], q)  # (T, B, F)
  np.testing.assert_allclose(eta, np.broadcast_to(eta[:1], eta.shape), atol=1e-3)
  keep = np.isclose(eta[0], 1 / (1 - rate) - 1, atol=1e-3)
  drop = np.isclose(eta[0], -1.0, atol=1e-3)
  assert np.all(keep | drop)
  assert len({tuple(r) for r in keep}) > 1  # the B streams draw different masks
  _, _, aux2 = m(_ids(), carry, key=jax.random.key(2))
  assert not np.allclose(_eta(aux2["raw"], aux2["dropped"], q)[0], eta[0], atol=1e-3)  # resampled


@pytest.mark.parametrize("q", [2.0, 1.5])
def test_locked_masks_on_embedding_output_and_between_layers(q):
  """Rate_i / rate_h locked masks: the mask of one stream and feature is constant over time."""
  reg = dataclasses.replace(lm.Regularisation.off(), rate_i=0.5, q_i=q)
  x = jax.random.normal(jax.random.key(0), (T, B, E)) + 3.0  # away from 0
  key = jax.random.key(3)
  y = lm._noise(reg, "i", key, x, (0,))
  eta = _eta(x, y, q)
  np.testing.assert_allclose(eta, np.broadcast_to(eta[:1], eta.shape), atol=1e-3)
  assert len({tuple(np.round(r, 3)) for r in eta[0]}) > 1


@pytest.mark.parametrize("q", [2.0, 1.5])
def test_embedding_mask_is_per_word_type(q):
  rate = 0.5
  reg = _only("e", rate, q)
  table = jax.random.uniform(jax.random.key(0), (V, E), minval=0.05, maxval=0.1)
  ids = jnp.array([[3, 3, 7, 7, 3, 9], [9, 11, 3, 7, 11, 3]])
  out = lm._embed(reg, jax.random.key(5), table, ids)
  rows = table[ids]
  eta = _eta(rows, out, q)  # (2, 6, E)
  # one mask per row: eta constant over the E features ...
  np.testing.assert_allclose(eta, np.broadcast_to(eta[..., :1], eta.shape), atol=1e-3)
  # ... and identical for every occurrence of a word type, anywhere in the batch
  flat_ids, flat_eta = np.asarray(ids).ravel(), eta[..., 0].ravel()
  for w in np.unique(flat_ids):
    assert np.ptp(flat_eta[flat_ids == w]) < 1e-3
  # the lookup is the whole-table sparseout with one mask per row
  ref = lm._noise(reg, "e", jax.random.key(5), table, (1,))[ids]
  np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_q2_model_equals_flax_dropout_model_bit_for_bit():
  reg = lm.Regularisation(
    rate_e=0.1, rate_i=0.4, rate_h=0.3, rate_o=0.4, rate_w=0.5
  )  # q = 2 everywhere
  m_s = _model(reg)
  m_d = _model(dataclasses.replace(reg, impl="dropout"))
  ids, carry, key = _ids(), m_s.init_carry(B), jax.random.key(7)

  def loss(model):
    logits, _, aux = model(ids, carry, key=key)
    return lm.lm_losses(logits, ids, jnp.ones((T, B)), aux["raw"], aux["dropped"])["loss"]

  ls, gs = nnx.value_and_grad(loss)(m_s)
  ld, gd = nnx.value_and_grad(loss)(m_d)
  assert ls == ld
  flat_d = dict(jax.tree_util.tree_leaves_with_path(gd))
  for path, a in jax.tree_util.tree_leaves_with_path(gs):
    if "embedding" in jax.tree_util.keystr(path):
      # The table's gradient is summed over a word's occurrences, then masked (dropout on the
      # table) or masked per occurrence, then summed (per-row mask looked up): one rounding apart
      # where the compiler does not reassociate (seen on an H200; bit-equal on CPU).
      np.testing.assert_allclose(a, flat_d[path], rtol=1e-6, atol=0)
    else:
      np.testing.assert_array_equal(a, flat_d[path])
  logits_a, _, _ = m_s(ids, carry, key=jax.random.key(8))
  logits_b, _, _ = m_d(ids, carry, key=jax.random.key(8))
  np.testing.assert_array_equal(logits_a, logits_b)
  assert not np.array_equal(logits_a, m_s(ids, carry, key=key)[0])


def test_weight_mask_one_per_forward_pass():
  """DropConnect: the recurrent matrix is noised once; the mask differs between keys."""
  reg = _only("w", 0.5, 1.5)
  w = jax.random.uniform(jax.random.key(0), (H, 4 * H), minval=0.1, maxval=0.2)
  y1 = lm._weight_noise(reg, jax.random.key(1), w)
  y2 = lm._weight_noise(reg, jax.random.key(2), w)
  e1 = _eta(w, y1, 1.5)
  assert np.all(np.isclose(e1, 1.0, atol=1e-3) | np.isclose(e1, -1.0, atol=1e-3))
  assert not np.allclose(y1, y2)


def test_deterministic_without_key_and_length_masking():
  m = _model(lm.Regularisation())
  ids, carry = _ids(t=8), m.init_carry(B)
  l1, c1, _ = m(ids, carry)
  l2, _, _ = m(ids, carry)
  np.testing.assert_array_equal(l1, l2)
  # a padded window with length 5 gives the carry and outputs of the 5-step window
  l5, c5, _ = m(ids[:5], carry)
  lp, cp, _ = m(ids, carry, length=jnp.int32(5))
  np.testing.assert_allclose(lp[:5], l5, rtol=1e-5, atol=1e-6)
  for (h_a, c_a), (h_b, c_b) in zip(c5, cp, strict=True):
    np.testing.assert_allclose(h_a, h_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_a, c_b, rtol=1e-5, atol=1e-6)


def _ref_lstm(x, h0, c0, w, seq, *, input_size, hidden_size, num_layers, dropout, bidirectional):
  """jax.experimental.rnn.lstm's CPU reference, called as rnn.lstm is (a stand-in for cuDNN)."""
  from jax.experimental import rnn

  wi, wh, bi, bh = rnn.unpack_lstm_weights(w, input_size, hidden_size, num_layers, bidirectional)
  return rnn.lstm_ref(
    x, h0, c0, wi, wh, bi, bh, seq, input_size, hidden_size, num_layers, dropout, bidirectional
  )


def test_scan_matches_step_by_step_reference_and_cudnn_packing():
  """The fused-input scan equals jax.experimental.rnn's reference LSTM fed our cuDNN-packed weights."""
  layer = lm.LSTMLayer(E, H, rngs=nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(2), (T, B, E))
  h0 = jax.random.normal(jax.random.key(3), (B, H))
  c0 = jax.random.normal(jax.random.key(4), (B, H))
  xproj = x @ layer.w_ih[...] + layer.b_ih[...] + layer.b_hh[...]
  ys, (h, c) = lm.lstm_scan(xproj, layer.w_hh[...], h0, c0)

  args = (x, layer.w_ih[...], layer.w_hh[...], layer.b_ih[...], layer.b_hh[...], h0, c0)
  yr, (hr, cr) = lm.lstm_cudnn(*args, lstm_fn=_ref_lstm)
  np.testing.assert_allclose(ys, yr, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h, hr, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c, cr, rtol=1e-5, atol=1e-5)
  if jax.default_backend() == "gpu":  # the real cuDNN kernel (not run on CPU: no lowering there)
    yg, (hg, cg) = lm.lstm_cudnn(*args)
    np.testing.assert_allclose(ys, yg, rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  m32 = _model(lm.Regularisation.off())
  m16 = _model(lm.Regularisation.off(), compute_dtype=jnp.bfloat16)
  ids, carry = _ids(), m32.init_carry(B)
  l32, _, _ = m32(ids, carry)
  l16, _, _ = m16(ids, carry)
  assert l16.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
  np.testing.assert_allclose(l16, l32, atol=3e-2)
  assert not np.array_equal(l16, l32)


def test_regularisation_validation():
  with pytest.raises(ValueError, match="rate_w"):
    lm.Regularisation(rate_w=1.0)
  with pytest.raises(ValueError, match="q_h"):
    lm.Regularisation(q_h=0.0)
  with pytest.raises(ValueError, match="backend"):
    _model(lm.Regularisation(), backend="cuda")


def test_losses_ar_tar_and_padding_weights():
  logits = jax.random.normal(jax.random.key(0), (4, 2, V))
  tgt = jnp.zeros((4, 2), jnp.int32)
  raw = jax.random.normal(jax.random.key(1), (4, 2, E))
  w = jnp.array([[1, 1], [1, 1], [1, 1], [0, 0]], jnp.float32)
  out = lm.lm_losses(logits, tgt, w, raw, 2 * raw, alpha=2.0, beta=1.0)
  ref = lm.lm_losses(logits[:3], tgt[:3], jnp.ones((3, 2)), raw[:3], 2 * raw[:3])
  for k in ("nll", "ar", "tar", "loss"):
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-6)
  np.testing.assert_allclose(out["ar"], 2.0 * np.mean(np.asarray(2 * raw[:3]) ** 2), rtol=1e-5)
  np.testing.assert_allclose(
    out["tar"], np.mean((np.asarray(raw[1:3]) - np.asarray(raw[:2])) ** 2), rtol=1e-5
  )


def test_cudnn_check_passes_a_correct_lstm_and_refuses_a_wrong_one():
  assert lm.check_cudnn_backend(_ref_lstm) < 1e-5

  def time_reversed(*args, **kw):  # a plausible wrong kernel: right numbers, wrong order
    y, h, c = _ref_lstm(*args, **kw)
    return y[:, ::-1], h, c

  with pytest.raises(RuntimeError, match="backend='scan'"):
    lm.check_cudnn_backend(time_reversed)
