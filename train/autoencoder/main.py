"""Train one autoencoder: ``python -m train.autoencoder.main --workdir runs/ae``.

Config: ``--config`` (default ``train/autoencoder/configs/default.py``); override any field with
``--config.<field>=value`` (e.g. ``--config.q=1.0``, ``--config.data_source=idx
--config.data_dir=$SPARSEOUT_DATA/mnist`` for the full 60k MNIST; docs/data.md). Multi-process:
``--coordinator_address host:port --num_processes N --process_id i`` (or the ``JAX_*`` environment
variables). Running the same command again resumes from the workdir.
"""

from train.common import cli

cli.define_flags("train/autoencoder/configs/default.py")

if __name__ == "__main__":
  cli.run("train.autoencoder.train")
