"""The command line every program shares: ``--workdir``, ``--config`` (with a default) and
``--config.<field>=value`` overrides, plus the multi-process flags of :mod:`train.common.distributed`.

A program's ``main.py`` is two lines::

    cli.define_flags("train/wrn/configs/wrn28_10_cifar10.py")
    if __name__ == "__main__":
        cli.run("train.wrn.train")

The studies and the Figure 1 sweep start the same way, with their own entry function and report,
so every command holds its workdir's lock and stops on a bad flag, a full disk or a data error with
one line. Running the same command again resumes from the workdir.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from train.common import distributed, errors, lock


def _config_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
  """The ``--config`` path given on the command line (or None) and the ``--config.<field>`` names."""
  path, fields = None, []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith("--config."):
      fields.append(arg[len("--config.") :].split("=", 1)[0])
  return path, fields


def _field_names(config: Any, prefix: str = "") -> list[str]:
  """Every dotted field name of a ConfigDict, nested ones too (``a``, ``a.b``)."""
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if hasattr(value, "items"):
      names += _field_names(value, prefix + key + ".")
  return names


def config_error(argv: Sequence[str], default_config: str) -> str | None:
  """The one-line ``error:`` for a missing config file or an unknown ``--config.<field>``, else None.

  Checked before ml_collections parses the flags, which would raise a long traceback instead.
  """
  given, fields = _config_argv(argv)
  path = given or default_config
  if not os.path.isfile(path):
    return (
      f"error: --config: no config file at {path} (expected a Python file defining get_config())"
    )
  spec = importlib.util.spec_from_file_location("_config_under_check", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  known = _field_names(module.get_config())
  for field in fields:
    if field not in known:
      close = difflib.get_close_matches(field, known, n=1)
      hint = f"did you mean --config.{close[0]}?" if close else "that file lists the fields"
      return f"error: --config.{field}: no such field in {path}; {hint}"
  return None


def define_flags(default_config: str, default_workdir: str | None = None) -> None:
  """Define ``--workdir`` (required unless ``default_workdir``), ``--config`` (default
  ``default_config``) and the process flags.

  A relative ``default_config`` is taken from the repository root, so the programs run from any
  working directory; a missing config file or an unknown ``--config.<field>`` exits with one line.
  """
  if not os.path.isabs(default_config):
    default_config = os.path.join(os.path.dirname(__file__), "..", "..", default_config)
    default_config = os.path.normpath(default_config)
  errors.install()  # before config_error runs the config file: a SyntaxError there is one line
  message = config_error(sys.argv[1:], default_config)
  if message:
    sys.exit(message)
  flags.DEFINE_string(
    "workdir",
    default_workdir,
    "Output folder (checkpoints, metrics, plots).",
    required=default_workdir is None,
  )
  config_flags.DEFINE_config_file("config", default_config, "Training config file.")
  distributed.define_flags()


def summary(out: dict[str, Any]) -> dict[str, Any]:
  """What a run prints at its end: the last evaluation row, the steps done and any final results."""
  last = (
    out["history"][-1] if out["history"] else {"note": "no epoch finished; run again to resume"}
  )
  return {**last, "steps": out["steps"], **out.get("final", {})}


def print_summary(out: dict[str, Any]) -> None:
  """A training program's report: its :func:`summary` as JSON and where the outputs are."""
  print(json.dumps(summary(out), indent=1, default=str))
  print(f"outputs in {out['workdir']}")


def run(
  module: str,
  entry: str = "train_and_evaluate",
  report: Callable[[dict[str, Any]], None] = print_summary,
) -> None:
  """Parse the flags, initialise the processes, run ``module.entry(config, workdir)``, report it.

  Args:
    module: the program's module (imported after ``jax.distributed`` is initialised).
    entry: the name of its ``(config, workdir) -> dict`` function.
    report: prints the returned dict (process 0 only).
  """

  def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    info = distributed.initialize_from_flags()
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    # One writer per workdir: a second launch stops here, before anything is written.
    with (
      lock.hold_for_job(workdir, info.process_index, info.process_count),
      errors.reporting_full_disk(workdir),
    ):
      program = importlib.import_module(module)  # after jax.distributed is initialised
      out = getattr(program, entry)(config, workdir)
    if info.is_main:
      report(out)

  app.run(main)
