"""The LM study: a small AWD-style LM on the first 100k PTB training tokens, where noise matters.

``python -m train.lm.study --workdir=runs/lm_study`` (the study's config is this file). The model
(embedding 64 tied to the decoder, LSTM 256 then 64, 1.06M parameters) sees 100k training tokens:
enough text that its perplexity falls far below a unigram model's (about 700), few enough that the
noise-free model overfits within 10 epochs. It trains for 20 epochs, so that the dropout baseline
converges too (at 10 it was still improving); the best-validation checkpoint stops the noise-free
model where it starts to overfit. q = 1.5 learns more slowly: ``--config.num_epochs=40`` continues
every run to where it has converged too. Validation and test use the first 20k tokens of each
split; the reported test perplexity is the best-validation checkpoint's. Noise sits on the locked
sites only (i: embedding output, h: between the layers, o: last output), one rate for all three;
the embedding and weight drops and AR/TAR are off, so the noise is the only regulariser. Sparseout
uses the authors' backward rule (``gradient="reference"``), as the paper's runs did. Conditions
run condition-major, the regime's evidence first (dropout, then no noise).
"""

import ml_collections

from train.lm.configs import ptb_awd


def get_config() -> ml_collections.ConfigDict:
  """The LM study: model, data slice and the study's conditions, seeds and rate."""
  c = ptb_awd.get_config()
  c.data_dir = "../shared/data/ptb"  # from the repository root, as CI has ../shared
  c.emb_size, c.hidden_size, c.num_layers = 64, 256, 2
  c.max_train_tokens, c.max_eval_tokens = 100_000, 20_000
  c.batch_size, c.bptt, c.variable_bptt, c.bptt_bucket = 32, 35, False, 35
  c.eval_batch_size = c.test_batch_size = 10
  c.rate_e = c.rate_w = 0.0
  c.rate_i = c.rate_h = c.rate_o = 0.0  # set per condition from the search's rate
  c.alpha = c.beta = 0.0
  c.gradient = "reference"
  c.num_epochs = 20
  c.log_every = 1000  # train rows only at epoch ends (an epoch has 89 steps)
  c.progress = False
  c.study = ml_collections.ConfigDict()
  # Conditions: "none" (no noise), "dropout" (Flax Dropout, q = 2), "q=<float>" (sparseout).
  c.study.conditions = "dropout,none,q=1.5,q=2.5"
  c.study.seeds = (1, 2, 3)
  # Paired table: every other condition minus this one, seed by seed (absent if it did not run).
  c.study.baseline = "dropout"
  # One rate: the "search" is a single dropout run (seed search_seed), the same run as dropout's
  # seed 1; a study may link runs/dropout_s1 to it instead of training it twice.
  c.study.search_rates = (0.3,)
  c.study.search_seed = 1
  c.study.sparsity_every = 20  # epochs between two sparsity measurements: once, at the end
  return c
