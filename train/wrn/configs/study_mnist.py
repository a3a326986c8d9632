"""The WRN study: WRN-10-1 on 1,000 MNIST digits padded to 32 x 32, no augmentation, 40 epochs.

``python -m train.wrn.study --workdir=runs/wrn_study``. The regime is chosen so that the study can
speak about claim (c) at all: a net that learns digits to a few per cent test error, a training set
small enough that without noise it overfits (its training error reaches 0 by epoch 13-17) and no
augmentation (random crops alone regularise a net this small so well that a noise layer only slows
it; flips turn digits into other shapes). The recipe is the CIFAR one (SGD nesterov, weight decay
5e-4, drop rate 0.3 after the block's second ReLU, lr x0.2 steps) on a 40-epoch schedule. Sparseout
uses the authors' backward rule (``gradient="reference"``), as the paper's runs did. Conditions run
condition-major, the regime's evidence first (dropout, then no noise), so a study cut short still
answers the first question. No substitute for CIFAR: the paper's claim is about CIFAR-10/100 at
WRN-28-10 (``train/wrn/configs/wrn28_10_cifar10.py``).
"""

import ml_collections

from train.wrn.configs import wrn28_10_cifar10


def get_config() -> ml_collections.ConfigDict:
  """WRN study: model, schedule and the study's conditions and seeds."""
  c = wrn28_10_cifar10.get_config()
  c.depth, c.width = 10, 1
  c.rate = 0.3
  c.gradient = "reference"
  c.flip = c.crop = False  # the digits as they are
  c.dtype = "float32"
  c.batch_size, c.eval_batch_size = 64, 500
  c.num_epochs = 40
  c.lr_boundaries = (20, 30)  # lr x0.2 from the start of (1-based) epochs 20 and 30
  c.progress = False
  c.study = ml_collections.ConfigDict()
  # Conditions: "none" (no noise), "dropout" (Flax Dropout, q = 2), "q=<float>" (sparseout).
  c.study.conditions = "dropout,none,q=2.5,q=1.5"
  c.study.seeds = (1, 2, 3)
  # Paired table: every other condition minus this one, seed by seed (absent if it did not run).
  c.study.baseline = "dropout"
  c.study.train_size = 1000  # the first N of the 8,000 training digits
  c.study.test_size = 2000  # the last N of the 2,000 test digits
  return c
