"""The LM study's tiny mode for CI: a tiny model on 6k PTB tokens, 2 epochs, 2 seeds (about a minute)."""

import ml_collections

from train.lm.configs import study


def get_config() -> ml_collections.ConfigDict:
  """Tiny LM study: the study's wiring end to end, numbers meaningless."""
  c = study.get_config()
  c.emb_size, c.hidden_size = 8, 16
  c.max_train_tokens, c.max_eval_tokens = 6_000, 1_000
  c.batch_size, c.bptt, c.bptt_bucket = 8, 20, 20
  c.num_epochs = 2
  c.study.conditions = "none,q=1.5"
  c.study.seeds = (0, 1)
  c.study.baseline = "none"
  c.study.search_rates = (0.3, 0.6)
  c.study.sparsity_every = 1
  return c
