"""Train a Wide ResNet on CIFAR: ``python -m train.wrn.main --workdir runs/wrn --config train/wrn/configs/wrn28_10_cifar10.py --config.data_dir=/data/cifar``.

Override any config field with ``--config.<field>=value`` (e.g. ``--config.q=3``,
``--config.regularizer=dropout``, ``--config.batch_size=64``, ``--config.dtype=bfloat16``).
Multi-process: ``--coordinator_address host:port --num_processes N --process_id i`` (or the ``JAX_*``
environment variables). Running the same command again resumes from the workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from train.common import distributed

flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, plots).", required=True)
config_flags.DEFINE_config_file(
  "config", "train/wrn/configs/wrn28_10_cifar10.py", "Training config file."
)
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  """Initialise the processes, train, print the final epoch's metrics."""
  del argv
  logging.set_verbosity(logging.WARNING)
  info = distributed.initialize_from_flags()
  from train.wrn import train  # after jax.distributed is initialised

  out = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if info.is_main:
    print(train.summary(out))
    print(f"outputs in {out['workdir']}")


if __name__ == "__main__":
  app.run(main)
