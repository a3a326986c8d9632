"""train/common/evaluation.py: sums over a split in float64, carried state, sparsity records; the LM's use."""

import jax
import jax.numpy as jnp
import numpy as np
from data_root import DATA, need
from flax import nnx

import sparseout_jax
from train.common import evaluation, parallel


def test_carried_sums_threads_the_state_through_the_windows_in_order() -> None:
  # s_i = 10 * c_{i-1} + w_i with c_i = w_i: each window sees exactly the one before it.
  step = jax.jit(lambda c, w: ({"s": 10.0 * c + w, "n": jnp.ones(())}, w))
  sums = evaluation.carried_sums(step, [jnp.float32(v) for v in (1, 2, 3)], jnp.float32(0))
  assert sums["s"] == (0 + 1) + (10 + 2) + (20 + 3)
  assert sums["n"] == 3.0 and sums["s"].dtype == np.float64


def test_eval_sums_counts_every_row_once_across_padded_batches() -> None:
  mesh = parallel.make_mesh(4)
  x = np.arange(1, 11, dtype=np.float32)  # 10 rows in batches of 4: the last padded and masked
  step = jax.jit(lambda b, m: {"sum": jnp.sum(b["x"] * m), "count": jnp.sum(m)})
  sums = evaluation.eval_sums(step, {"x": x}, 4, mesh)
  assert sums == {"sum": 55.0, "count": 10.0}


def test_mean_records_counts_only_batches_without_padding(monkeypatch) -> None:
  # A record is a mean over the whole batch, padding included, so a padded batch's must not count.
  def sums(mask, hoyer):
    monkeypatch.setattr(
      sparseout_jax, "sparsity_records", lambda _: {"layer": {"hoyer": jnp.float32(hoyer)}}
    )
    return evaluation.record_sums(None, mask)

  a, b = sums(jnp.ones(4), 0.5), sums(jnp.array([1.0, 1.0, 0.0, 0.0]), 0.9)
  total = {k: float(a[k]) + float(b[k]) for k in a}
  assert evaluation.mean_records(total) == {"sparsity/layer/hoyer": 0.5}


def test_lm_evaluation_counts_every_token_once_with_the_state_carried() -> None:
  """The LM's evaluation (common carried_sums + its step) equals one pass over the whole streams.

  The reference runs the model once over all time steps (the state flows through without windows)
  and adds every token's nll in float64; the evaluation adds float32 window sums in float64, so
  they agree to float32 summation rounding over a window (rtol 1e-6).
  """
  need("ptb")
  from train.lm import input_pipeline as ip
  from train.lm import train
  from train.lm.configs import tiny

  c = tiny.get_config()
  c.data_dir, c.q = str(DATA / "ptb"), 1.5
  corpus = train._load_data(c)
  graphdef, host, _ = train.init_state(c, len(corpus.vocab))
  params, data, streams = host["params"], corpus.valid[:1001], 10
  got = train.evaluate(graphdef, params, data, streams, c.bptt)

  windows = list(ip.eval_batches(data, streams, c.bptt))
  x, y, w = (
    np.concatenate([getattr(b, f) for b in windows]) for f in ("inputs", "targets", "weights")
  )

  @jax.jit
  def nll(params, x, y):
    model = nnx.merge(graphdef, params)
    (logits, _, _), _ = nnx.capture(model, nnx.Intermediate)(x, model.init_carry(streams))
    return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0]

  nll = np.asarray(nll(params, x, y))
  want = float(np.sum(nll.astype(np.float64) * w)) / float(np.sum(w))
  assert got["tokens"] == len(data) - 1 == int(np.sum(w))
  np.testing.assert_allclose(got["loss"], want, rtol=1e-6)
  assert {"sparsity/site_i/hoyer", "sparsity/site_o/hoyer"} <= got.keys()
