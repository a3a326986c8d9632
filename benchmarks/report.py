"""What every benchmark writes with its numbers: the machine, the command, the date; markdown and JSON.

A results file must say where its figures came from: :func:`metadata` records the platform, the
device kind and count, the CPU, the load average, the JAX version, the date and the exact command;
:func:`write` puts it at the head of ``<stem>.md`` (with the benchmark's own description) and in
``<stem>.json`` beside the results.
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


def metadata(args: argparse.Namespace | None = None, **extra: Any) -> dict[str, Any]:
  """Machine, software, date and command of this run (plus ``extra``).

  Example:
    >>> sorted(metadata())[:3]
    ['command', 'cpu', 'date']
  """
  dev = jax.devices()[0]
  return {
    "platform": dev.platform,
    "device": getattr(dev, "device_kind", dev.platform),
    "devices": jax.device_count(),
    "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    "jax": jax.__version__,
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "command": " ".join(
      [os.environ.get("XLA_FLAGS", "") and f"XLA_FLAGS={os.environ['XLA_FLAGS']}", "python -m"]
      + [sys.modules["__main__"].__spec__.name if sys.modules["__main__"].__spec__ else sys.argv[0]]
      + sys.argv[1:]
    ).strip(),
    "args": vars(args) if args is not None else {},
    **extra,
  }


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


def write(
  out_dir: str, stem: str, meta: dict[str, Any], results: Any, markdown: str, doc: str
) -> str:
  """Write ``<out_dir>/<stem>.json`` (meta + results) and ``.md`` (title, meta, table); return the md path."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=1, default=float)
  title = doc.strip().splitlines()[0]
  head = (
    f"# {title}\n\n"
    f"Command: `{meta['command']}`  \n"
    f"Date: {meta['date']}; {meta['platform']} ({meta['device']}) x {meta['devices']}; "
    f"{meta['cpu']}; load average {meta['load_average']}; JAX {meta['jax']}.\n\n"
  )
  path = os.path.join(out_dir, f"{stem}.md")
  with open(path, "w") as f:
    f.write(head + markdown + "\n")
  return path
