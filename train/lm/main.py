"""AWD-LSTM language model with Sparseout on PTB / WikiText-2.

python -m train.lm.main --config=train/lm/configs/ptb_small.py --workdir=runs/lm_small_q1.5 --config.q=1.5
"""

from absl import app, flags, logging
from ml_collections import config_flags

from train.common import distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder; rerunning with it resumes.")
flags.DEFINE_string(
  "data_dir", None, "Folder with the three split files (overrides config.data_dir)."
)
flags.DEFINE_bool(
  "download", None, "Download missing files and check sha256 (overrides config.download)."
)
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  distributed.initialize_from_flags()
  from train.lm import train  # after jax.distributed is set up

  config = FLAGS.config
  with config.unlocked():
    if FLAGS.data_dir is not None:
      config.data_dir = FLAGS.data_dir
    if FLAGS.download is not None:
      config.download = FLAGS.download
  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except FileNotFoundError as e:  # missing data: the message says which files go where
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
