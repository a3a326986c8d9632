"""Train an AWD-LSTM language model with Sparseout: ``python -m train.lm.main --workdir runs/ptb_q1.5 --config.q=1.5``.

Config: ``--config`` (default ``train/lm/configs/ptb_awd.py``, the paper's PTB model); override any
field with ``--config.<field>=value`` (e.g. ``--config.data_dir=$SPARSEOUT_DATA/ptb``,
``--config.download=True``). Multi-process: ``--coordinator_address host:port --num_processes N
--process_id i`` (or the ``JAX_*`` environment variables). Running the same command again resumes
from the workdir.
"""

from train.common import cli

cli.define_flags("train/lm/configs/ptb_awd.py")

if __name__ == "__main__":
  cli.run("train.lm.train")
