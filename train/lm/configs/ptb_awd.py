"""AWD-LSTM on Penn Treebank at the paper's size (paper 4.4, Table 3); q and rates from the command line.

Run: ``python -m train.lm.main --workdir=runs/ptb_q1.5 --config.data_dir=../shared/data/ptb --config.q=1.5``
(salesforce/awd-lstm-lm README command for PTB: batch 20, dropouti 0.4, dropouth 0.25, 500 epochs).

As the paper's Sparseout runs: plain SGD (the paper: "we used only stochastic gradient descent"), q on the
sites the paper replaced (embedding dropout and the variational dropouts: e, i, h, o), the weight drop kept as
DropConnect (``q_w = 2``; set ``--config.q_w`` to change it), and the authors' backward rule
(``gradient="reference"``, dy/dx = 1 + |x|**(q/2-1) eta, their PyTorch code's): the paper's numbers were
produced with it, as the Figure 1 sweep's are (``train/autoencoder/configs/figure1.py``).
"""

import ml_collections
from ml_collections import config_dict

from train.common import run_control


def get_config() -> ml_collections.ConfigDict:
  """The PTB AWD-LSTM configuration."""
  c = ml_collections.ConfigDict()
  # data
  c.dataset = "ptb"
  c.data_dir = ""  # the folder with ptb.{train,valid,test}.txt, e.g. ../shared/data/ptb
  c.download = False  # fetch missing files into data_dir and check their sha256
  c.max_train_tokens = 0  # 0: all (tests cut the corpus)
  c.max_eval_tokens = 0
  # model
  c.emb_size = 400
  c.hidden_size = 1150
  c.num_layers = 3
  c.compute_dtype = "float32"  # or "bfloat16" (params stay float32)
  c.backend = "scan"  # or "cudnn" (GPU only, float32)
  # regularisation: drop rates (AWD names: dropoute, dropouti, dropouth, dropout, wdrop) and q
  c.impl = "sparseout"  # "dropout": Flax nnx.Dropout everywhere (q ignored)
  c.gradient = "reference"  # the authors' rule, as the paper's runs (module docstring)
  c.q = 2.0  # the norm of the sites e, i, h, o unless q_<site> is set
  c.rate_e, c.rate_i, c.rate_h, c.rate_o, c.rate_w = 0.1, 0.4, 0.25, 0.4, 0.5
  for s in "eiho":
    c[f"q_{s}"] = config_dict.placeholder(float)
  c.q_w = 2.0  # the weight drop stays DropConnect: the paper replaced only e, i, h, o
  c.alpha = 2.0  # AR on the regularised last-layer output
  c.beta = 1.0  # TAR on the raw last-layer output
  # optimisation
  c.batch_size = 20  # global, split over hosts and devices
  c.bptt = 70
  c.variable_bptt = True
  c.bptt_bucket = 8  # windows padded to a multiple of this: few jit shapes
  c.eval_batch_size = 10
  c.test_batch_size = 1
  c.optimizer = (
    "sgd"  # "ntasgd": switch to averaged SGD when validation stops improving (AWD main.py)
  )
  c.nonmono = 5
  c.finetune_epochs = (
    0  # > 0: then continue from the best checkpoint with averaged SGD (AWD finetune.py)
  )
  c.learning_rate = 30.0
  c.clip = 0.25
  c.weight_decay = 1.2e-6
  c.num_epochs = 500
  c.max_steps_per_epoch = 0  # 0: whole epochs (benchmarks cut them)
  c.seed = 141
  # Run control: checkpoint_every_epochs, skip_nonfinite, max_steps, log_every, progress,
  # record_sparsity (train/common/run_control.py).
  run_control.add_run_control(c)
  c.log_every = 50
  return c
