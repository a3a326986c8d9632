"""WRN-28-10 on CIFAR-10 with Sparseout between the convolutions of each block (paper section 4.3).

Every field is documented here; the other configs start from this one and override a few fields.
As the paper trained (section 4.3): SGD with a mini-batch of 64, float32, Sparseout with the authors'
backward rule (``gradient="reference"``, their PyTorch code's: the paper's numbers were produced with
it). The schedule is the WRN reference's: SGD nesterov 0.9, weight decay 5e-4, lr 0.1 x0.2 at the start of
epochs 60/120/160 of 200 (a fresh momentum buffer at each drop, as the reference's new optimizer).

The WRN reference's own settings (Zagoruyko & Komodakis: batch 128) are one override away:
``--config=train/wrn/configs/wrn28_10_cifar10.py:wrn_reference`` (batch 128, and the compute dtype
``auto``: bfloat16 on GPU/TPU). The exact Sparseout gradient: ``--config.gradient=exact``.
"""

import ml_collections

from train.common import run_control

VARIANTS = ("paper", "wrn_reference")


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
  """Return the paper's CIFAR-10 config, or with ``variant="wrn_reference"`` the WRN reference's batch."""
  if variant not in VARIANTS:
    raise ValueError(f"config variant must be one of {VARIANTS}, got {variant!r}")
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "cifar10"  # cifar10 | cifar100
  c.data_source = (
    "auto"  # auto (binary archives in data_dir, else TFDS) | binary | tfds | synthetic
  )
  c.data_dir = ""  # folder with cifar-10-binary.tar.gz / cifar-100-binary.tar.gz (or TFDS data)
  c.flip = True  # random horizontal flips in training (False for digits: a mirrored digit is another shape)
  c.crop = True  # random crops after reflect-padding 4 pixels (False: the images as they are)
  c.synthetic_size = 512  # training examples of the synthetic source (test: a quarter)
  # Model: WRN-depth-width.
  c.depth = 28
  c.width = 10
  c.regularizer = "sparseout"  # sparseout | dropout (Flax Dropout) | none
  c.rate = 0.3  # drop probability
  c.q = 2.5  # sparseout norm; 2 = dropout. The paper reports q > 2 beating dropout on CIFAR.
  c.placement = "after_relu"  # after_relu (WRN reference, paper 4.3) | before_bn (an experiment)
  c.gradient = "reference"  # sparseout backward rule: reference (the paper's runs) | exact
  c.bn_momentum = 0.9  # Flax convention (PyTorch momentum 0.1)
  c.remat_noise = False  # True: recompute each block's noise in the backward (less memory)
  # Compute dtype: float32 | bfloat16 | auto (bfloat16 on GPU/TPU, float32 on CPU); parameters and BN
  # statistics stay float32 either way.
  c.dtype = "float32" if variant == "paper" else "auto"
  # Optimiser.
  c.batch_size = 64 if variant == "paper" else 128  # global batch over all processes and devices
  c.learning_rate = 0.1
  c.lr_decay = 0.2
  c.lr_boundaries = (
    60,
    120,
    160,
  )  # lr *= lr_decay and momentum restarts at the start of these 1-based epochs
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 5e-4  # L2 in the gradient on every parameter, as the reference's torch SGD
  c.num_epochs = 200
  c.seed = 0  # parameter init and noise keys
  c.data_seed = 0  # data order and augmentation
  c.eval_batch_size = 1024  # global (a power of two divides any power-of-two device count); last batch padded + masked
  # Run control: checkpoint_every_epochs, skip_nonfinite, max_steps, log_every, progress,
  # record_sparsity (train/common/run_control.py).
  run_control.add_run_control(c)
  return c
