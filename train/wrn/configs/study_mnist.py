"""The WRN sparsity study (issue 12): WRN-10-1 on the shipped MNIST digits padded to 32 x 32.

``python -m train.wrn.study --workdir=runs/wrn_study``. A small net that trains in about a minute
per run on 2 CPU cores; the recipe is the CIFAR one (SGD nesterov, weight decay 5e-4, crop and flip
augmentation, drop rate 0.3 after the block's second ReLU) on a short schedule. Sparseout uses the
authors' backward rule (``gradient="reference"``), as the Figure 1 sweep does. No substitute for
CIFAR: the paper's claim is about CIFAR-10/100 at WRN-28-10.
"""

import ml_collections

from train.wrn.configs import wrn28_10_cifar10


def get_config() -> ml_collections.ConfigDict:
  """WRN study: model, schedule and the study's conditions and seeds."""
  c = wrn28_10_cifar10.get_config()
  c.depth, c.width = 10, 1
  c.rate = 0.3
  c.gradient = "reference"
  c.dtype = "float32"
  c.batch_size, c.eval_batch_size = 32, 500
  c.num_epochs = 2
  c.lr_boundaries = (2,)  # lr x0.2 from the start of (1-based) epoch 2
  c.progress = False
  c.study = ml_collections.ConfigDict()
  # Conditions: "none" (no noise), "dropout" (Flax Dropout, q = 2), "q=<float>" (sparseout).
  c.study.conditions = "none,dropout,q=1,q=1.5,q=2.5,q=3"
  c.study.seeds = (1, 2, 3)
  # Paired table: every other condition minus this one, seed by seed (absent if it did not run).
  c.study.baseline = "dropout"
  c.study.train_size = 3000  # the first N of the 8,000 training digits
  c.study.test_size = 1000  # the last N of the 2,000 test digits
  return c
