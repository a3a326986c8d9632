"""The AWD-LSTM dropout baseline on PTB (Flax Dropout at every site; equals ptb_awd at q = 2)."""

import ml_collections

from train.lm.configs import ptb_awd


def get_config() -> ml_collections.ConfigDict:
  """PTB AWD-LSTM with Flax dropout."""
  c = ptb_awd.get_config()
  c.impl = "dropout"
  return c
