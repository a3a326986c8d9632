"""WRN-28-10 on CIFAR-100 with Sparseout (paper section 4.3); otherwise as ``wrn28_10_cifar10``."""

import ml_collections

from train.wrn.configs import wrn28_10_cifar10


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
  """Return the paper's CIFAR-100 config (``variant="wrn_reference"``: the WRN reference's batch)."""
  c = wrn28_10_cifar10.get_config(variant)
  c.dataset = "cifar100"
  return c
