"""One autoencoder run on the shipped MNIST split: sparseout q=1.5 on 1024 ReLU units (section 4.1).

Every field is documented here; the Figure 1 sweep (``figure1.py``) reuses them.
"""

import ml_collections

from train.common import run_control


def get_config() -> ml_collections.ConfigDict:
  """Return the default single-run config."""
  c = ml_collections.ConfigDict()
  # Model: 784 -> hidden ReLU -> 784; the regulariser acts on the hidden activations.
  c.hidden = 1024
  c.regularizer = "sparseout"  # none | dropout | sparseout | bridgeout
  c.rate = 0.5  # drop probability, the same for every regulariser
  c.q = 1.5  # sparseout / bridgeout norm; 2 = dropout
  c.gradient = "exact"  # sparseout backward rule: exact | reference (authors' code)
  c.loss = "mse"  # mse on sigmoid outputs | bce
  # Optimiser.
  c.optimizer = "adam"  # adam | adamw | sgd | momentum
  c.learning_rate = 1e-3
  c.weight_decay = 0.0  # decoupled (adamw) or L2 (sgd/momentum/adam) on the kernels, see train.py
  c.momentum = 0.9
  c.batch_size = 128  # global batch, split over processes and local devices
  c.num_epochs = 15
  c.seed = 0  # parameter init and noise keys
  c.data_seed = 0  # data order
  # Data: "shipped" (repo's t10k split 8k/2k), "idx" (four IDX files in data_dir), "tfds".
  c.data_source = "shipped"
  c.data_dir = ""
  c.train_eval_size = 10000  # clean train-loss evaluation on the first N train images
  c.eval_batch_size = 1000
  # Run control: checkpoint_every_epochs, skip_nonfinite, max_steps, log_every, progress,
  # record_sparsity (train/common/run_control.py).
  run_control.add_run_control(c)
  return c
