"""AWD-LSTM on WikiText-2 at the paper's size (AWD README: batch 80, dropouth 0.2, dropouti 0.65, 750 epochs)."""

import ml_collections

from train.lm.configs import ptb_awd


def get_config() -> ml_collections.ConfigDict:
  """The WikiText-2 AWD-LSTM configuration."""
  c = ptb_awd.get_config()
  c.dataset = "wt2"
  c.data_dir = ""  # the folder with {train,valid,test}.txt, e.g. ../shared/data/wikitext-2
  c.batch_size = 80
  c.rate_e, c.rate_i, c.rate_h, c.rate_o, c.rate_w = 0.1, 0.65, 0.2, 0.4, 0.5
  c.num_epochs = 750
  c.seed = 1882
  return c
