"""Train one autoencoder: ``python -m train.autoencoder.main --workdir runs/ae --config train/autoencoder/configs/default.py``.

Override any config field with ``--config.<field>=value`` (e.g. ``--config.q=1.0``,
``--config.data_source=idx --config.data_dir=../shared/data/mnist`` for the full 60k MNIST).
Multi-process: ``--coordinator_address host:port --num_processes N --process_id i`` (or the
``JAX_*`` environment variables). Running the same command again resumes from the workdir.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from train.common import distributed

flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, plots).", required=True)
config_flags.DEFINE_config_file(
  "config", "train/autoencoder/configs/default.py", "Training config file."
)
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  """Initialise the processes, train, print the final epoch's metrics."""
  del argv
  logging.set_verbosity(logging.WARNING)
  info = distributed.initialize_from_flags()
  from train.autoencoder import train  # after jax.distributed is initialised

  out = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if info.is_main:
    print(json.dumps(out["history"][-1], indent=1))
    print(f"outputs in {out['workdir']}")


if __name__ == "__main__":
  app.run(main)
