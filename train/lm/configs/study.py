"""The LM seed study (issue 12): a small AWD-style LM on a PTB slice small enough to overfit.

``python -m train.lm.study --workdir=runs/lm_study`` (the study's config is this file). The model
(embedding 64 tied to the decoder, LSTM 256 then 64) sees the first 20k PTB training tokens, so the
noise-free model's validation perplexity turns up within the budget. Noise sits on the locked sites
only (i: embedding output, h: between the layers, o: last output), one rate for all three, chosen by
a short dropout search; the embedding and weight drops and AR/TAR are off, so the noise is the only
regulariser. Sparseout uses the authors' backward rule (``gradient="reference"``), as the Figure 1
sweep does.
"""

import ml_collections

from train.lm.configs import ptb_awd


def get_config() -> ml_collections.ConfigDict:
  """The LM study: model, data slice and the study's conditions, seeds and search."""
  c = ptb_awd.get_config()
  c.data_dir = "../shared/data/ptb"  # from the repository root, as CI has ../shared
  c.emb_size, c.hidden_size, c.num_layers = 64, 256, 2
  c.max_train_tokens, c.max_eval_tokens = 20_000, 10_000
  c.batch_size, c.bptt, c.variable_bptt, c.bptt_bucket = 16, 35, False, 35
  c.eval_batch_size = c.test_batch_size = 10
  c.rate_e = c.rate_w = 0.0
  c.rate_i = c.rate_h = c.rate_o = 0.0  # set per condition from the search's rate
  c.alpha = c.beta = 0.0
  c.gradient = "reference"
  c.num_epochs = 10
  c.log_every = 1000  # train rows only at epoch ends (an epoch has 36 steps)
  c.study = ml_collections.ConfigDict()
  # Conditions: "none" (no noise), "dropout" (Flax Dropout, q = 2), "q=<float>" (sparseout).
  c.study.conditions = "none,dropout,q=1,q=1.5,q=2.5,q=3"
  c.study.seeds = (1, 2, 3)
  # Paired table: every other condition minus this one, seed by seed (absent if it did not run).
  c.study.baseline = "dropout"
  c.study.search_rates = (0.25, 0.5)  # dropout rates tried once (seed search_seed)
  c.study.search_seed = 0
  c.study.sparsity_every = 2  # epochs between two sparsity measurements
  return c
