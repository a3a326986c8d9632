"""LM training program (train/lm): loss falls on real PTB, exact resume, NT-ASGD, skipped epochs.

(The same run on 1, 2, 4 and 8 devices: tests/test_device_count.py.)
"""

import json
import os

import jax
import numpy as np
import pytest
from data_root import DATA, need

from train.common import checkpoint as ckpt_lib
from train.lm import train
from train.lm.configs import tiny

PTB = str(DATA / "ptb")


def _config(**kw):
  need("ptb")  # every run here reads PTB
  c = tiny.get_config()
  c.data_dir = PTB
  for k, v in kw.items():
    c[k] = v
  return c


def _final_params(workdir, config):
  _, target, _ = train.init_state(config, 10_000)
  return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).restore(target)[0]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
  monkeypatch.setenv("TQDM_DISABLE", "1")


def test_loss_falls_on_real_ptb_slice(tmp_path):
  need("ptb")
  c = _config(num_devices=1, variable_bptt=False, num_epochs=2, max_eval_tokens=1000)
  res = train.train_and_evaluate(c, str(tmp_path))["final"]
  hist = json.load(open(tmp_path / "results.json"))["history"]
  assert hist[1]["epoch/train_nll"] < hist[0]["epoch/train_nll"] - 0.2
  assert hist[1]["eval/ppl"] < hist[0]["eval/ppl"]
  assert res["valid_ppl"] < 1500  # uniform over 10k words would be 10,000
  assert res["test_tokens"] == 999 and res["valid_tokens"] == 999  # every target once
  assert (tmp_path / "valid_curve.png").stat().st_size > 1000
  rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert any("epoch/tokens_per_s" in r for r in rows)
  assert [r["test/ppl"] for r in rows if "test/ppl" in r] == [res["test_ppl"]]
  # The sites sow their sparsity records at each evaluation: i, between the layers, o.
  sites = {k.split("/")[2] for k in hist[-1] if k.startswith("eval/sparsity/")}
  assert sites == {"site_i", "site_h", "site_o"}
  assert 0.0 < hist[-1]["eval/sparsity/site_h/0/hoyer"] < 1.0
  assert (tmp_path / "sparsity.png").stat().st_size > 1000


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
  need("ptb")
  kw = dict(num_devices=2, num_epochs=2, max_steps_per_epoch=7, max_eval_tokens=300)
  c = _config(**kw)
  train.train_and_evaluate(c, str(tmp_path / "full"))
  ci = _config(max_steps=10, **kw)  # in epoch 2, mid-epoch: carry and key must resume
  out = train.train_and_evaluate(ci, str(tmp_path / "cut"))
  assert out["steps"] == 10 and out["final"] == {}  # not tested until it finishes
  train.train_and_evaluate(_config(**kw), str(tmp_path / "cut"))
  a, b = _final_params(str(tmp_path / "full"), c), _final_params(str(tmp_path / "cut"), c)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  ra = json.load(open(tmp_path / "full" / "results.json"))
  rb = json.load(open(tmp_path / "cut" / "results.json"))
  assert ra["test_ppl"] == rb["test_ppl"] and ra["steps"] == rb["steps"] == 14


def test_paper_configs_are_the_papers_runs() -> None:
  """q on the sites the paper replaced (e, i, h, o), the weight drop DropConnect (q_w = 2), plain SGD, the
  authors' backward rule; AWD-LSTM's own configs add NT-ASGD and the finetune stage (Table 3's AWD rows)."""
  from train.lm.configs import ptb_awd, ptb_awd_lstm, wt2_awd, wt2_awd_lstm

  for mod in (ptb_awd, wt2_awd):
    c = mod.get_config()
    c.q = 1.5
    reg = train.regularisation_from_config(c)
    assert (reg.q_e, reg.q_i, reg.q_h, reg.q_o, reg.q_w) == (1.5, 1.5, 1.5, 1.5, 2.0)
    assert reg.gradient == "reference" and c.optimizer == "sgd" and c.finetune_epochs == 0
  for mod, epochs in ((ptb_awd_lstm, 500), (wt2_awd_lstm, 750)):
    c = mod.get_config()
    assert (c.impl, c.optimizer, c.finetune_epochs, c.num_epochs) == (
      "dropout",
      "ntasgd",
      epochs,
      epochs,
    )


def test_averaged_sgd_keeps_the_mean_of_the_iterates() -> None:
  """With ``asgd`` on, ``avg`` after k steps is the mean of the k iterates (torch ASGD, t0 = 0, lambd = 0);
  with it off, ``avg`` stays as it was."""
  need("ptb")
  c = _config(num_devices=1, variable_bptt=False)
  mesh = train.parallel.make_mesh(1)
  graphdef, state, tx = train.init_state(c, 10_000)
  corpus = train._load_data(c)
  streams = train.ip.batchify(corpus.train, c.batch_size)
  windows = [train.ip.make_window(streams, s, 10) for s in (0, 10, 20)]
  for on in (False, True):
    r = train.place(state, mesh)
    if on:
      opt = train._map_average(r["opt_state"], r["params"])
      r = r | {"opt_state": opt}
    step = train.make_train_step(graphdef, tx, c, r)
    iterates = []
    for i, w in enumerate(windows):
      batch = train.parallel.put_batch({"x": w.inputs, "y": w.targets}, mesh, axis=1)
      batch["length"] = train.parallel.put_replicated(np.int32(w.length), mesh)
      r, _ = step(r, batch, train.parallel.replicate_key(jax.random.key(i), mesh))
      iterates.append(jax.tree.leaves(train.parallel.to_host(r["params"])))
    avg_state = train.average_state(r["opt_state"])
    avg = jax.tree.leaves(train.parallel.to_host(avg_state.avg))
    start = jax.tree.leaves(state["params"])
    for j, a in enumerate(avg):
      want = np.mean([it[j] for it in iterates], axis=0) if on else start[j]
      np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
    assert int(train.parallel.to_host(avg_state.count)) == (3 if on else 0)


def test_perplexity_of_an_overflowing_loss_is_inf_with_a_warning() -> None:
  assert train.perplexity(2.0) == pytest.approx(np.exp(2.0))
  for loss in (1000.0, float("inf"), float("nan")):
    with pytest.warns(UserWarning, match="reported as inf"):
      assert train.perplexity(loss) == float("inf")


@pytest.mark.slow
def test_an_epoch_of_skipped_steps_finishes_with_inf_perplexity(tmp_path) -> None:
  """lr 1e30: the first step's update makes every later loss non-finite; with skip_nonfinite the
  second epoch skips every step, and the run finishes and tests with inf perplexity, no exception."""
  need("ptb")
  c = _config(
    num_devices=1,
    num_epochs=2,
    max_steps_per_epoch=3,
    max_eval_tokens=300,
    learning_rate=1e30,
    skip_nonfinite=True,
  )
  with pytest.warns(UserWarning, match="reported as inf"):
    out = train.train_and_evaluate(c, str(tmp_path))
  assert out["skipped_steps"] == 5 and out["steps"] == 6
  assert "epoch/train_nll" not in out["history"][1] and out["history"][1]["eval/ppl"] == np.inf
  assert out["final"]["test_ppl"] == np.inf
  assert (tmp_path / "valid_curve.png").stat().st_size > 1000


@pytest.mark.slow
def test_ntasgd_switches_when_validation_gets_worse(tmp_path) -> None:
  """AWD's trigger: gradient ascent (lr < 0) makes every validation worse than the one before, so with
  nonmono = 1 the switch comes after epoch 3 (the first with two earlier losses); epoch 4 runs averaged."""
  c = _config(
    num_devices=1,
    num_epochs=4,
    optimizer="ntasgd",
    nonmono=1,
    learning_rate=-30.0,
    max_steps_per_epoch=3,
    max_eval_tokens=300,
  )
  out = train.train_and_evaluate(c, str(tmp_path))
  losses = [r["eval/loss"] for r in out["history"]]
  assert losses == sorted(losses)  # worse every epoch
  assert [r["epoch/asgd"] for r in out["history"]] == [0, 0, 0, 1]


@pytest.mark.slow
def test_finetune_continues_from_the_best_checkpoint_with_averaged_sgd(tmp_path) -> None:
  c = _config(
    num_devices=1, num_epochs=1, finetune_epochs=2, max_steps_per_epoch=3, max_eval_tokens=300
  )
  out = train.train_and_evaluate(c, str(tmp_path))
  assert out["final"]["stage"] == 1 and out["steps"] == 6
  # Averaging from the first step; epoch 0 is the starting point, which competes for the best checkpoint.
  assert [r["epoch/asgd"] for r in out["history"]] == [1, 1, 1]
  rows = [json.loads(x) for x in open(tmp_path / "finetune" / "metrics.jsonl")]
  assert [r["epoch"] for r in rows if "eval/loss" in r] == [0, 1, 2]
  stage0 = _final_params(str(tmp_path), c)
  assert not bool(train.average_state(stage0["opt_state"]).on)
  fin = _final_params(str(tmp_path / "finetune"), c)
  fin_avg = train.average_state(fin["opt_state"])
  assert bool(fin_avg.on) and int(fin_avg.count) == 6
  # The finetune starts from stage 0's best checkpoint: its epoch-0 validation is that checkpoint's.
  rows0 = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert out["history"][0]["eval/ppl"] == [r["eval/ppl"] for r in rows0 if "eval/ppl" in r][-1]
