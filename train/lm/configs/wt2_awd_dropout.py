"""The AWD-LSTM dropout baseline on WikiText-2 (Flax Dropout at every site)."""

import ml_collections

from train.lm.configs import wt2_awd


def get_config() -> ml_collections.ConfigDict:
  """WikiText-2 AWD-LSTM with Flax dropout."""
  c = wt2_awd.get_config()
  c.impl = "dropout"
  return c
