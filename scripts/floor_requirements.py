"""Prints the lowest versions pyproject.toml declares, pinned: one `name==version` a line.

The floors CI step (scripts/floors.sh) installs exactly these, so what pyproject.toml promises is
what is tested. An extra may raise a core floor (the programs need a newer flax than the library);
the highest floor of a name among the chosen groups wins.
Usage: python scripts/floor_requirements.py [EXTRA ...]   (the core always, then the extras)
"""

from __future__ import annotations

import pathlib
import re
import sys
import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9]+(?:\.[0-9]+)*)\s*(?:,.*)?$")


def floor_pins(extras: tuple[str, ...] = (), path: pathlib.Path = PYPROJECT) -> list[str]:
  """`name==floor` for every core requirement and every requirement of `extras`.

  floor(name) = max over the chosen groups of the `>=` bound they declare for name.

  Args:
    extras: the optional-dependency groups to include besides the core.
    path: the pyproject.toml to read.

  Returns:
    The pins, in the order pyproject.toml first lists each name.

  Raises:
    ValueError: a requirement has no numeric `>=` floor (nothing could be tested for it).

  Example:
    >>> floor_pins()[:2]
    ['jax==0.8.1', 'jaxlib==0.8.1']
  """
  project = tomllib.loads(path.read_text())["project"]
  reqs = list(project["dependencies"])
  for extra in extras:
    reqs += project["optional-dependencies"][extra]
  floors: dict[str, tuple[str, str]] = {}  # normalised name -> (name as written, version)
  for req in reqs:
    m = _FLOOR.match(req)
    if m is None:
      raise ValueError(f"{path.name}: requirement {req!r} declares no `>=` floor to test")
    key = re.sub(r"[-_.]+", "-", m[1]).lower()
    name = floors[key][0] if key in floors else m[1]
    if key not in floors or _release(m[2]) > _release(floors[key][1]):
      floors[key] = (name, m[2])
  return [f"{name}=={version}" for name, version in floors.values()]


def _release(version: str) -> tuple[int, ...]:
  return tuple(int(part) for part in version.split("."))


if __name__ == "__main__":
  print("\n".join(floor_pins(tuple(sys.argv[1:]))))
