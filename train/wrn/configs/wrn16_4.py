"""WRN-16-4 on CIFAR-10 (2.7M parameters): a quick run of the same recipe."""

import ml_collections

from train.wrn.configs import wrn28_10_cifar10


def get_config() -> ml_collections.ConfigDict:
  """Return the quick config."""
  c = wrn28_10_cifar10.get_config()
  c.depth = 16
  c.width = 4
  return c
