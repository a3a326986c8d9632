"""The standard data files, checked against their known size and sha256 every time a program reads them.

A program that trains on a truncated or altered copy of PTB, WikiText-2, MNIST or CIFAR gives
numbers that look like results; the check turns that into one :class:`~train.common.errors.DataError`
naming the file and what differs. It costs one read of each file (sha256 at about 1-2 GB/s on one
core: milliseconds for PTB, WikiText-2 and MNIST, a fraction of a second for a CIFAR archive).

Users who train on their own modified copies turn it off with the config field ``verify_data``
(``--config.verify_data=False``); the readers then still reject what they cannot parse (a bad
archive, a wrong record size, bytes that are not UTF-8) with the same one-line error.
Each program passes that field to its reader as ``verify=``; readers verify unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np

from train.common import errors
from train.common.data import sha256_of

OPT_OUT = "set --config.verify_data=False to use a modified copy on purpose"


@dataclasses.dataclass(frozen=True)
class KnownFile:
  """A standard data file: its size in bytes and the hex sha256 of its bytes."""

  size: int
  sha256: str


def verify_file(
  path: str | os.PathLike, known: KnownFile, *, verify: bool = True, hint: str = ""
) -> None:
  """Check that ``path`` is the standard file: first its size (cheap), then its sha256.

  Args:
    path: the file.
    known: its expected size and sha256.
    verify: False skips the check (a user's own modified copy).
    hint: appended to the message (e.g. where to get the original file).

  Raises:
    DataError: the file is missing, has another size (truncated, extended) or other bytes; the
      message names the file, what differs, and the opt-out.

  Example:
    >>> import hashlib, tempfile
    >>> from train.common import datafiles
    >>> with tempfile.NamedTemporaryFile() as f:
    ...   _ = f.write(b"abc"); f.flush()
    ...   known = datafiles.KnownFile(3, hashlib.sha256(b"abc").hexdigest())
    ...   datafiles.verify_file(f.name, known)  # passes silently
  """
  if not verify:
    return
  tail = f"{hint}; {OPT_OUT}" if hint else f"; {OPT_OUT}"
  try:
    size = os.path.getsize(path)
  except OSError:
    raise errors.DataError(f"{path} is missing (expected the standard file){hint}") from None
  if size != known.size:
    what = "truncated" if size < known.size else "longer than the standard file"
    raise errors.DataError(
      f"{path} is {what}: {size:,} bytes, expected {known.size:,} (sha256 {known.sha256}){tail}"
    )
  got = sha256_of(path)
  if got != known.sha256:
    raise errors.DataError(
      f"{path} is damaged or not the standard file: sha256 {got}, expected {known.sha256}{tail}"
    )


# ----------------------------------------------------------------------------- MNIST (IDX)

MNIST = {
  "train-images-idx3-ubyte.gz": KnownFile(
    9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
  ),
  "train-labels-idx1-ubyte.gz": KnownFile(
    28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
  ),
  "t10k-images-idx3-ubyte.gz": KnownFile(
    1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
  ),
  "t10k-labels-idx1-ubyte.gz": KnownFile(
    4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
  ),
}
"""The four files of http://yann.lecun.com/exdb/mnist/ (the repository ships the two t10k ones)."""


def read_idx(path: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
  """Read a gzipped IDX file (MNIST's format) into a uint8 array, verifying a standard file first.

  Args:
    path: the ``.gz`` IDX file; one of :data:`MNIST`'s names is checked with :func:`verify_file`.
    verify: as in :func:`verify_file`.

  Returns:
    The array, e.g. images ``(N, 28, 28)`` or labels ``(N,)``, uint8.

  Raises:
    DataError: missing, damaged (size or sha256), not gzip, no IDX uint8 header, or truncated.

  Example:
    >>> import pathlib
    >>> from train.common import datafiles
    >>> repo = pathlib.Path(datafiles.__file__).resolve().parents[2]
    >>> shipped = repo / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    >>> datafiles.read_idx(shipped).shape
    (10000,)
  """
  path = os.fspath(path)
  known = MNIST.get(os.path.basename(path))
  if not os.path.isfile(path):
    want = f" (expected sha256 {known.sha256})" if known else ""
    raise errors.DataError(f"MNIST file not found: {path}{want}")
  if known is not None:
    verify_file(path, known, verify=verify)
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise errors.DataError(f"MNIST file {path} is not a readable gzip file ({e})") from None
  if len(raw) < 8 or raw[:3] != b"\x00\x00\x08":
    raise errors.DataError(f"MNIST file {path} has no IDX uint8 header")
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(raw) - offset != int(np.prod(shape)):
    raise errors.DataError(
      f"MNIST file {path} is truncated: header says {shape}, {len(raw) - offset:,} bytes follow"
    )
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)
