"""WRN-10-1 on synthetic CIFAR-shaped data: what CI trains (a few steps, seconds on a CPU)."""

import ml_collections

from train.wrn.configs import wrn28_10_cifar10


def get_config() -> ml_collections.ConfigDict:
  """Return the CI config."""
  c = wrn28_10_cifar10.get_config()
  c.data_source = "synthetic"
  c.synthetic_size = 64
  c.depth = 10
  c.width = 1
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_epochs = 3
  c.lr_boundaries = (2,)
  c.dtype = "float32"
  c.progress = False
  return c
