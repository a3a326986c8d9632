"""The WRN study: WRN-10-1 on 4,000 MNIST digits padded to 32 x 32, trained to convergence.

``python -m train.wrn.study --workdir=runs/wrn_study``. The regime is chosen so that the study can
speak about claim (c) at all: a net that learns digits to about 1-2 % test error, a training set
small enough for it to overfit (its training error reaches 0), and no flips (a mirrored digit is
another shape; random crops stay). The recipe is the CIFAR one (SGD nesterov, weight decay 5e-4,
drop rate 0.3 after the block's second ReLU, lr x0.2 steps) on a 12-epoch schedule. Sparseout uses
the authors' backward rule (``gradient="reference"``), as the paper's runs did. Conditions run
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
  c.flip = False  # digits: crops only
  c.dtype = "float32"
  c.batch_size, c.eval_batch_size = 64, 500
  c.num_epochs = 12
  c.lr_boundaries = (7, 10)  # lr x0.2 from the start of (1-based) epochs 7 and 10
  c.progress = False
  c.study = ml_collections.ConfigDict()
  # Conditions: "none" (no noise), "dropout" (Flax Dropout, q = 2), "q=<float>" (sparseout).
  c.study.conditions = "dropout,none,q=2.5,q=1.5"
  c.study.seeds = (1, 2, 3)
  # Paired table: every other condition minus this one, seed by seed (absent if it did not run).
  c.study.baseline = "dropout"
  c.study.train_size = 4000  # the first N of the 8,000 training digits
  c.study.test_size = 2000  # the last N of the 2,000 test digits
  return c
