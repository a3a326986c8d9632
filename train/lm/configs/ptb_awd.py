"""AWD-LSTM on Penn Treebank at the paper's size (SPEC 4.4); q and rates from the command line.

Run: ``python -m train.lm.main --config=train/lm/configs/ptb_awd.py --config.q=1.5 --workdir=runs/ptb_q1.5``
(salesforce/awd-lstm-lm README command for PTB: batch 20, dropouti 0.4, dropouth 0.25, 500 epochs).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """The PTB AWD-LSTM configuration."""
  c = ml_collections.ConfigDict()
  # data
  c.dataset = "ptb"
  c.data_dir = "../shared/data/ptb"
  c.download = False
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
  c.gradient = "exact"
  c.q = 2.0  # the norm of every site unless q_<site> is set
  c.rate_e, c.rate_i, c.rate_h, c.rate_o, c.rate_w = 0.1, 0.4, 0.25, 0.4, 0.5
  for s in "eihow":
    c[f"q_{s}"] = config_dict.placeholder(float)
  c.alpha = 2.0  # AR on the regularised last-layer output
  c.beta = 1.0  # TAR on the raw last-layer output
  # optimisation
  c.batch_size = 20  # global, split over hosts and devices
  c.bptt = 70
  c.variable_bptt = True
  c.bptt_bucket = 8  # windows padded to a multiple of this: few jit shapes
  c.eval_batch_size = 10
  c.test_batch_size = 1
  c.optimizer = "sgd"  # "ntasgd": AWD-LSTM's non-monotonically triggered averaging
  c.nonmono = 5
  c.learning_rate = 30.0
  c.clip = 0.25
  c.weight_decay = 1.2e-6
  c.num_epochs = 500
  c.max_steps_per_epoch = 0  # 0: whole epochs (benchmarks cut them)
  c.seed = 141
  c.num_devices = 0  # 0: every local device; n: the first n (single process only)
  c.log_every = 50
  c.interrupt_at_step = 0  # testing hook: behave as if SIGTERM arrived after this step
  return c
