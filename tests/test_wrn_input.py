"""Tests of train/wrn/input_pipeline.py: binary archives, TFDS mock data, augmentation, shuffling, sharding."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest

from train.wrn import input_pipeline as ip


def _record_bytes(label: int, image: np.ndarray, coarse: int | None = None) -> bytes:
  """One official CIFAR binary record, built by hand: label byte(s), then the R, G and B planes row-major."""
  head = bytes([label]) if coarse is None else bytes([coarse, label])
  return head + image[:, :, 0].tobytes() + image[:, :, 1].tobytes() + image[:, :, 2].tobytes()


def _write_archive(tmp_path, name: str, sizes: dict[str, int], seed: int = 0):
  """Write a small official-format archive; returns {split: (images, labels)} of what was written."""
  rng = np.random.default_rng(seed)
  spec = ip._BINARY[name]
  folder = tmp_path / spec["folder"]
  folder.mkdir()
  written: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
  for split in ("train", "test"):
    for fname in spec[split]:
      n = sizes[split]
      images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
      labels = rng.integers(0, ip.NUM_CLASSES[name], size=n)
      coarse = rng.integers(0, 20, size=n) if name == "cifar100" else [None] * n
      with open(folder / fname, "wb") as f:
        for img, lab, c in zip(images, labels, coarse, strict=True):
          f.write(_record_bytes(int(lab), img, None if c is None else int(c)))
      written[split][0].append(images)
      written[split][1].append(labels)
  with tarfile.open(tmp_path / spec["archive"], "w:gz") as tar:
    tar.add(folder, arcname=spec["folder"])
  return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in written.items()}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_binary_archive_round_trip(tmp_path, name: str) -> None:
  # A few records, not the published files: verify=False (tests/test_data_verify.py checks those).
  written = _write_archive(tmp_path, name, {"train": 6, "test": 5})
  from_dir = {
    s: ip.read_cifar_binary(str(tmp_path), name, s, verify=False) for s in ("train", "test")
  }
  os.rename(
    tmp_path / ip._BINARY[name]["folder"], tmp_path / "moved"
  )  # now only the .tar.gz is there
  for split in ("train", "test"):
    ds = ip.load(name, split, str(tmp_path), "auto", verify=False)
    images, labels = written[split]
    assert ds.num_classes == ip.NUM_CLASSES[name]
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    np.testing.assert_array_equal(from_dir[split].images, images)
    np.testing.assert_array_equal(from_dir[split].labels, labels)
  assert len(ip.read_cifar_binary(str(tmp_path), name, "train", verify=False)) == 6 * len(
    ip._BINARY[name]["train"]
  )


def test_missing_and_corrupt_files_give_clear_errors(tmp_path) -> None:
  with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz"):
    ip.read_cifar_binary(str(tmp_path), "cifar10", "train")
  (tmp_path / "cifar-100-binary").mkdir()
  (tmp_path / "cifar-100-binary" / "train.bin").write_bytes(
    b"\0" * 3073
  )  # CIFAR-10 record size: wrong here
  with pytest.raises(ValueError, match="3074-byte"):
    ip.read_cifar_binary(str(tmp_path), "cifar100", "train", verify=False)
  with pytest.raises(ValueError, match="3,073 bytes, expected 153,700,000"):
    ip.read_cifar_binary(str(tmp_path), "cifar100", "train")
  with pytest.raises(FileNotFoundError, match="test.bin"):
    ip.read_cifar_binary(str(tmp_path), "cifar100", "test")
  with pytest.raises(
    FileNotFoundError, match="cifar-10-binary.tar.gz"
  ):  # neither archive nor TFDS data
    ip.load("cifar10", "train", str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="dataset"):
    ip.load("mnist", "train", str(tmp_path))


def test_tfds_mock_data_source() -> None:
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    ds = ip.load("cifar10", "train", None, "tfds")
  assert ds.images.shape == (12, 32, 32, 3) and ds.images.dtype == np.uint8
  assert ds.labels.shape == (12,) and 0 <= ds.labels.min() and ds.labels.max() < 10


def test_augment_is_reflect_padded_crop_with_flip() -> None:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(400, 32, 32, 3), dtype=np.uint8)
  out = ip.augment(images, np.random.default_rng(1))
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
  flips, offsets = 0, set()
  for i in range(len(images)):
    hits = [
      (dy, dx, f)
      for dy in range(9)
      for dx in range(9)
      for f in (False, True)
      if np.array_equal(
        out[i], (lambda c: c[:, ::-1] if f else c)(padded[i, dy : dy + 32, dx : dx + 32])
      )
    ]
    assert len(hits) == 1, "each output must be exactly one (offset, flip) view of the padded image"
    flips += hits[0][2]
    offsets.add(hits[0][:2])
  assert 150 < flips < 250  # Binomial(400, 1/2): mean 200, sd 10
  assert len(offsets) > 70  # 81 offsets possible, 400 draws


def test_normalize_uses_wrn_statistics() -> None:
  x = np.broadcast_to(np.array([125.3, 123.0, 113.9]), (1, 32, 32, 3)).round().astype(np.uint8)
  np.testing.assert_allclose(
    ip.normalize(x)[0, 0, 0], (np.array([125, 123, 114]) - ip.MEAN) / ip.STD, rtol=1e-6
  )


def test_epoch_shuffle_host_shards_and_dropped_remainder() -> None:
  # Label == example index, so labels identify examples.
  ds = ip.ArrayDataset(np.zeros((103, 32, 32, 3), np.uint8), np.arange(103, dtype=np.int32), 103)
  assert ip.train_steps_per_epoch(103, 20) == 5  # 3 examples dropped each epoch
  epochs = []
  for epoch in (0, 0, 1):
    hosts = [
      list(ip.train_batches(ds, global_batch=20, seed=5, epoch=epoch, host_id=h, num_hosts=2))
      for h in range(2)
    ]
    assert len(hosts[0]) == len(hosts[1]) == 5
    labels = []
    for b in range(5):
      assert (
        hosts[0][b]["image"].shape == (10, 32, 32, 3) and hosts[0][b]["image"].dtype == np.float32
      )
      labels.append(np.concatenate([hosts[0][b]["label"], hosts[1][b]["label"]]))
    epochs.append(np.stack(labels))
  np.testing.assert_array_equal(epochs[0], epochs[1])  # same (seed, epoch): same order
  assert not np.array_equal(epochs[0], epochs[2])  # reshuffled next epoch
  # Every example at most once per epoch (hosts' shares disjoint), and the same global batches as one host.
  assert len(np.unique(epochs[0])) == 100
  one_host = list(ip.train_batches(ds, global_batch=20, seed=5, epoch=0))
  for b in range(5):
    assert sorted(one_host[b]["label"].tolist()) == sorted(epochs[0][b].tolist())
  with pytest.raises(ValueError, match="divisible"):
    next(ip.train_batches(ds, global_batch=21, seed=0, epoch=0, host_id=0, num_hosts=2))


def test_train_batches_resume_mid_epoch_is_exact() -> None:
  ds = ip.synthetic(64, 10, seed=0)
  full = list(ip.train_batches(ds, global_batch=16, seed=3, epoch=2))
  tail = list(ip.train_batches(ds, global_batch=16, seed=3, epoch=2, start_batch=2))
  assert len(full) == 4 and len(tail) == 2
  for a, b in zip(full[2:], tail, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_synthetic_is_learnable_and_checked() -> None:
  ds = ip.load("cifar100", "test", None, "synthetic", synthetic_size=400)
  assert len(ds) == 100 and ds.num_classes == 100
  with pytest.raises(ValueError, match="labels"):
    ip.ArrayDataset(np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 10]), 10)
