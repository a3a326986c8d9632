"""AWD-LSTM's own WikiText-2 recipe, the paper's "AWD-LSTM" row of Table 3 (test ppl 65.8).

As ``ptb_awd_lstm`` on WikiText-2 (AWD README: 750 epochs, then finetune for 750).
"""

import ml_collections

from train.lm.configs import wt2_awd


def get_config() -> ml_collections.ConfigDict:
  """WikiText-2 AWD-LSTM with NT-ASGD and finetuning."""
  c = wt2_awd.get_config()
  c.impl = "dropout"
  c.optimizer = "ntasgd"
  c.finetune_epochs = 750
  return c
