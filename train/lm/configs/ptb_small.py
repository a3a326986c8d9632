"""A small AWD-style LM on the full Penn Treebank, sized for ~10 minutes on 2 CPU cores.

Two LSTM layers (256, 128), embedding 128 tied to the decoder, batch 64, 2 epochs, milder rates
than the paper's (a 2-epoch model is far from overfitting). Compare q with everything else equal:

  python -m train.lm.main --config=train/lm/configs/ptb_small.py --workdir=runs/lm_small_q2 --config.q=2
  python -m train.lm.main --config=train/lm/configs/ptb_small.py --workdir=runs/lm_small_q1.5 --config.q=1.5
"""

import ml_collections

from train.lm.configs import ptb_awd


def get_config() -> ml_collections.ConfigDict:
  """Small PTB configuration."""
  c = ptb_awd.get_config()
  c.emb_size, c.hidden_size, c.num_layers = 128, 256, 2
  c.rate_e, c.rate_i, c.rate_h, c.rate_o, c.rate_w = 0.05, 0.2, 0.1, 0.2, 0.2
  c.batch_size = 64
  c.bptt = 70
  c.bptt_bucket = 16  # few window shapes: few compilations
  c.num_epochs = 2
  c.log_every = 20
  c.seed = 141
  return c
