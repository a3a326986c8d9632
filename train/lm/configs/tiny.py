"""A tiny PTB slice configuration for tests and smoke runs (seconds on a CPU)."""

import ml_collections

from train.lm.configs import ptb_awd


def get_config() -> ml_collections.ConfigDict:
  """Tiny model on the first 20k PTB training tokens."""
  c = ptb_awd.get_config()
  c.emb_size, c.hidden_size, c.num_layers = 16, 24, 2
  c.max_train_tokens, c.max_eval_tokens = 20_000, 2_000
  c.batch_size = 8
  c.bptt = 20
  c.bptt_bucket = 8
  c.num_epochs = 2
  c.log_every = 10
  c.seed = 0
  return c
