"""The WRN study's tiny mode for CI: 64 training digits, 1 epoch, 2 conditions x 2 seeds."""

import ml_collections

from train.wrn.configs import study_mnist


def get_config() -> ml_collections.ConfigDict:
  """Tiny WRN study: the study's wiring end to end, numbers meaningless."""
  c = study_mnist.get_config()
  c.batch_size, c.eval_batch_size = 16, 16
  c.num_epochs = 1
  c.study.conditions = "none,q=1.5"
  c.study.seeds = (0, 1)
  c.study.baseline = "none"
  c.study.train_size, c.study.test_size = 64, 32
  return c
