"""The MNIST digits the repository ships (``data/mnist/``, the t10k split) as 32 x 32 x 3 images.

For the WRN's studies on digits (docs/results.md), not a CIFAR substitute: 28 x 28 greyscale digits padded
with 2 black pixels on each side and repeated over 3 channels, so the CIFAR pipeline (normalisation,
crop, flip) and model run unchanged. Split as the autoencoder does: the first 8,000 train, the last
2,000 test (a study may take fewer of each).
"""

from __future__ import annotations

import pathlib

import numpy as np

from train.common import datafiles
from train.wrn.input_pipeline import ArrayDataset

SHIPPED_DIR = pathlib.Path(__file__).resolve().parents[2] / "data" / "mnist"
# name, sha256 and IDX header length of the shipped files (data/mnist/README.md).
FILES = {
  kind: (name, datafiles.MNIST[name].sha256, header)
  for kind, name, header in (
    ("images", "t10k-images-idx3-ubyte.gz", 16),
    ("labels", "t10k-labels-idx1-ubyte.gz", 8),
  )
}
TRAIN_SIZE, TEST_SIZE = 8000, 2000


def _read(kind: str, folder: pathlib.Path, verify: bool) -> np.ndarray:
  # Size and sha256 checked on every read (train.common.datafiles): a damaged copy is a DataError.
  return datafiles.read_idx(folder / FILES[kind][0], verify=verify)


def load_mnist32(
  folder: str | None = None,
  train_size: int = TRAIN_SIZE,
  test_size: int = TEST_SIZE,
  *,
  verify: bool = True,
) -> dict[str, ArrayDataset]:
  """The shipped digits as ``{"train", "test"}`` ArrayDatasets of uint8 (N, 32, 32, 3) images.

  ``image[2:30, 2:30, c] = digit`` for c = 0, 1, 2; zeros elsewhere.

  Args:
    folder: where the two t10k ``.gz`` files are (default: the repository's ``data/mnist``).
    train_size: how many of the first 8,000 images train.
    test_size: how many of the last 2,000 images test.
    verify: check the files' sizes and sha256 (``config.verify_data``).

  Returns:
    The train and test splits, 10 classes.

  Example:
    >>> load_mnist32()["test"].images.shape
    (2000, 32, 32, 3)
  """
  if not 0 < train_size <= TRAIN_SIZE:
    raise ValueError(f"train_size must be in [1, {TRAIN_SIZE}], got {train_size}")
  if not 0 < test_size <= TEST_SIZE:
    raise ValueError(f"test_size must be in [1, {TEST_SIZE}], got {test_size}")
  d = pathlib.Path(folder) if folder else SHIPPED_DIR
  digits = _read("images", d, verify).reshape(-1, 28, 28)
  labels = _read("labels", d, verify).astype(np.int32)
  images = np.zeros((len(digits), 32, 32, 3), np.uint8)
  images[:, 2:30, 2:30, :] = digits[..., None]
  return {
    "train": ArrayDataset(images[:train_size], labels[:train_size], 10),
    "test": ArrayDataset(images[-test_size:], labels[-test_size:], 10),
  }
