"""What every benchmark writes with its numbers: the machine, the command, the date; markdown and JSON.

A results file must say where its figures came from: :func:`metadata` records the platform, the
device kind and count, the CPU, the load average, the JAX version, the date and the exact command;
:func:`header` is its markdown head; :func:`write` puts it at the head of ``<stem>.md`` (with the
benchmark's own description) and in ``<stem>.json`` beside the results. Every benchmark writes its
files through these (``write_json`` / ``write_text`` where a suite writes several parts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax


def metadata(
  args: argparse.Namespace | None = None, command: str | None = None, **extra: Any
) -> dict[str, Any]:
  """Machine, software, date and command of this run (plus ``extra``).

  Args:
    args: the parsed flags (stored under ``"args"``).
    command: the command to record (default: this process's, with its ``XLA_FLAGS``).
    **extra: more entries.

  Example:
    >>> sorted(metadata(note="x"))[:4]
    ['args', 'command', 'cpu', 'date']
  """
  dev = jax.devices()[0]
  return {
    "platform": dev.platform,
    "device": getattr(dev, "device_kind", dev.platform),
    "devices": jax.device_count(),
    "cpu": f"{_cpu_model()}, {os.cpu_count()} cores",
    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    "jax": jax.__version__,
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "command": command or _command(),
    "args": vars(args) if args is not None else {},
    **extra,
  }


def _cpu_model() -> str:
  """The CPU's model name (Linux), else what ``platform`` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def _command() -> str:
  main = sys.modules["__main__"]
  spec = getattr(main, "__spec__", None)
  return " ".join(
    [os.environ.get("XLA_FLAGS", "") and f"XLA_FLAGS={os.environ['XLA_FLAGS']}", "python -m"]
    + [spec.name if spec else sys.argv[0]]
    + sys.argv[1:]
  ).strip()


def header(title: str, meta: dict[str, Any]) -> str:
  """The head of a results file: the title, then the command, date, machine and JAX of ``meta``."""
  return (
    f"# {title}\n\n"
    f"Command: `{meta['command']}`  \n"
    f"Date: {meta['date']}; {meta['platform']} ({meta['device']}) x {meta['devices']}; "
    f"{meta['cpu']}; load average {_load(meta['load_average'])}; JAX {meta['jax']}.\n\n"
  )


def _load(load: Any) -> str:
  return "n/a" if load is None else ", ".join(f"{x:.1f}" for x in load)


def ratio_cell(r: dict[str, Any], digits: int = 3) -> str:
  """``median [lo, hi]`` of a paired ratio (``benchmarks._timing.paired_ratio``'s one clock)."""
  lo, hi = r["ci"]
  return f"{r['median']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table.

  Example:
    >>> print(table(("a", "b"), [(1, 2)]))
    | a | b |
    |---|---|
    | 1 | 2 |
  """
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_json(path: str, obj: Any) -> None:
  """``obj`` as JSON at ``path`` (its folder made; numpy scalars as numbers, anything else as text)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, default=_plain)


def _plain(x: Any) -> Any:
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)


def write_text(path: str, text: str) -> str:
  """``text`` at ``path`` (its folder made); return the path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return path


def write(
  out_dir: str, stem: str, meta: dict[str, Any], results: Any, markdown: str, doc: str
) -> str:
  """Write ``<out_dir>/<stem>.json`` (meta + results) and ``.md`` (title, meta, markdown); return the md path.

  The title is the first line of ``doc`` (the benchmark's docstring, or a title).
  """
  write_json(os.path.join(out_dir, f"{stem}.json"), {"meta": meta, "results": results})
  title = doc.strip().splitlines()[0]
  return write_text(os.path.join(out_dir, f"{stem}.md"), header(title, meta) + markdown + "\n")
