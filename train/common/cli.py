"""The command line every program shares: ``--workdir``, ``--config`` (with a default) and
``--config.<field>=value`` overrides, plus the multi-process flags of :mod:`train.common.distributed`.

A program's ``main.py`` is two lines::

    cli.define_flags("train/wrn/configs/wrn28_10_cifar10.py")
    if __name__ == "__main__":
        cli.run("train.wrn.train")

Running the same command again resumes from the workdir.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from train.common import distributed


def define_flags(default_config: str) -> None:
  """Define ``--workdir`` (required), ``--config`` (default ``default_config``) and the process flags."""
  flags.DEFINE_string(
    "workdir", None, "Output folder (checkpoints, metrics, plots).", required=True
  )
  config_flags.DEFINE_config_file("config", default_config, "Training config file.")
  distributed.define_flags()


def summary(out: dict[str, Any]) -> dict[str, Any]:
  """What a run prints at its end: the last evaluation row, the steps done and any final results."""
  last = (
    out["history"][-1] if out["history"] else {"note": "no epoch finished; run again to resume"}
  )
  return {**last, "steps": out["steps"], **out.get("final", {})}


def run(train_module: str) -> None:
  """Parse the flags, initialise the processes, train ``train_module``'s program, print its summary."""

  def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    info = distributed.initialize_from_flags()
    train = importlib.import_module(train_module)  # after jax.distributed is initialised
    out = train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    if info.is_main:
      print(json.dumps(summary(out), indent=1, default=str))
      print(f"outputs in {out['workdir']}")

  app.run(main)
