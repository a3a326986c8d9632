"""AWD-LSTM's own PTB recipe, the paper's "AWD-LSTM" row of Table 3 (test ppl 57.3).

Dropout everywhere, NT-ASGD (averaged SGD once validation stops improving for ``nonmono`` epochs, AWD's
``main.py``), then the finetune stage: from the best checkpoint, averaged SGD from the first step until
validation stops improving (AWD's ``finetune.py``; the README's PTB commands run both for 500 epochs).
The 57.3 is without the neural cache pointer.

Run: ``python -m train.lm.main --config=train/lm/configs/ptb_awd_lstm.py --workdir=runs/ptb_awd_lstm
--config.data_dir=../shared/data/ptb``
"""

import ml_collections

from train.lm.configs import ptb_awd


def get_config() -> ml_collections.ConfigDict:
  """PTB AWD-LSTM with NT-ASGD and finetuning."""
  c = ptb_awd.get_config()
  c.impl = "dropout"
  c.optimizer = "ntasgd"
  c.finetune_epochs = 500
  return c
