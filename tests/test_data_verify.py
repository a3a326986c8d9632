"""Data verified on every load: each damaged standard file gives one DataError naming it and the fault.

Covers PTB and WikiText-2 (truncated, garbled bytes, not UTF-8), MNIST (the IDX files and the
shipped data/mnist), and CIFAR (archive and extracted batches: truncated, garbled, a bad archive, a
wrong record size, a label out of range) with verification on, and with the opt-out
(``config.verify_data=False``): the readers then still reject what they cannot parse. CIFAR is not
on this machine, so a fake archive stands in, with the known size and sha256 set to the fake's.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile

import numpy as np
import pytest
from data_root import DATA, need

from train.autoencoder import input_pipeline as ae_ip
from train.common import datafiles, errors
from train.lm import input_pipeline as lm_ip
from train.wrn import input_pipeline as wrn_ip
from train.wrn import mnist as wrn_mnist


def _copy_ptb(tmp_path) -> str:
  need("ptb")
  d = tmp_path / "ptb"
  shutil.copytree(DATA / "ptb", d)
  for f in d.iterdir():
    f.chmod(0o644)  # the shared copies are read-only
  return str(d)


def _garble(path, n: int = 64, at: float = 0.5) -> None:
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(int(size * at))
    f.write(b"\xff" * n)


def test_ptb_truncated_is_refused_unless_opted_out(tmp_path) -> None:
  d = _copy_ptb(tmp_path)
  train = os.path.join(d, "ptb.train.txt")
  with open(train, "r+b") as f:
    f.truncate(int(os.path.getsize(train) * 0.6))
  with pytest.raises(errors.DataError) as e:
    lm_ip.load_corpus("ptb", d)
  msg = str(e.value)
  assert train in msg and "truncated" in msg and "5,101,618" in msg
  assert "--config.verify_data=False" in msg and "\n" not in msg
  corpus = lm_ip.load_corpus("ptb", d, verify=False)  # a user's own cut: accepted, as asked
  assert 0.55 < len(corpus.train) / 929_589 < 0.65


def test_the_lm_program_passes_config_verify_data_to_its_reader(tmp_path) -> None:
  # The config field, not a process-wide setting, decides: studies and direct calls of
  # train_and_evaluate honour it as the command line does.
  from train.lm import train as lm_train
  from train.lm.configs import tiny

  d = _copy_ptb(tmp_path)
  train = os.path.join(d, "ptb.train.txt")
  with open(train, "r+b") as f:
    f.truncate(int(os.path.getsize(train) * 0.6))
  config = tiny.get_config()
  config.data_dir = d
  with pytest.raises(errors.DataError, match="truncated"):
    lm_train._load_data(config)
  config.verify_data = False
  # Read, not refused: the cut copy lacks words that only its missing 40 % held.
  assert len(lm_train._load_data(config).vocab) < 10_000


def test_ptb_garbled_bytes_are_named(tmp_path) -> None:
  d = _copy_ptb(tmp_path)
  train = os.path.join(d, "ptb.train.txt")
  _garble(train)
  with pytest.raises(errors.DataError, match="damaged or not the standard file: sha256"):
    lm_ip.load_corpus("ptb", d)
  with pytest.raises(errors.DataError) as e:  # unverified, the bytes still are not text
    lm_ip.load_corpus("ptb", d, verify=False)
  offset = int(5_101_618 * 0.5)
  assert f"{train} is not UTF-8 text: byte 0xff at offset {offset:,} (line " in str(e.value)


def test_wikitext2_is_verified(tmp_path) -> None:
  need("wikitext-2")
  d = tmp_path / "wt2"
  shutil.copytree(DATA / "wikitext-2", d)
  (d / "valid.txt").chmod(0o644)
  with open(d / "valid.txt", "ab") as f:
    f.write(b"an extra line\n")
  with pytest.raises(errors.DataError, match="valid.txt is longer than the standard file"):
    lm_ip.load_corpus("wt2", str(d))


def test_lm_messages_name_flags_that_exist(tmp_path) -> None:
  with pytest.raises(errors.DataError) as e:
    lm_ip.load_corpus("ptb", str(tmp_path))
  msg = str(e.value)
  assert "--config.data_dir=" in msg and "--config.download=True" in msg
  assert " --data_dir" not in msg and " --download " not in msg


@pytest.mark.parametrize("reader", ["autoencoder", "wrn"])
def test_mnist_damaged_or_truncated_is_named(tmp_path, reader) -> None:
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    shutil.copy(ae_ip.SHIPPED_DIR / name, tmp_path / name)
  labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
  with open(labels, "r+b") as f:
    f.seek(100)
    f.write(b"\x00\x01")
  load = {
    "autoencoder": lambda: ae_ip.read_idx(labels),
    "wrn": lambda: wrn_mnist.load_mnist32(str(tmp_path)),
  }[reader]
  with pytest.raises(errors.DataError, match=f"{labels} is damaged.*sha256"):
    load()
  with open(labels, "r+b") as f:
    f.truncate(3000)
  with pytest.raises(errors.DataError, match=f"{labels} is truncated: 3,000 bytes, expected 4,542"):
    load()


def test_shipped_mnist_passes_and_the_table_matches_it() -> None:
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    path = ae_ip.SHIPPED_DIR / name
    known = datafiles.MNIST[name]
    assert (os.path.getsize(path), datafiles.sha256_of(path)) == (known.size, known.sha256)
  assert wrn_mnist.load_mnist32(train_size=10, test_size=10)["test"].images.shape == (10, 32, 32, 3)


def test_mnist_idx_table_matches_the_full_files() -> None:
  d = need("mnist")
  for name, known in datafiles.MNIST.items():
    assert (os.path.getsize(d / name), datafiles.sha256_of(d / name)) == (known.size, known.sha256)


# ----------------------------------------------------------------------------- CIFAR (fake)


def _fake_cifar10(tmp_path, monkeypatch, n: int = 4) -> dict:
  """A small archive in the official layout, registered as 'the standard file' for this test."""
  rng = np.random.default_rng(0)
  folder = tmp_path / "cifar-10-batches-bin"
  folder.mkdir()
  spec = dict(wrn_ip._BINARY["cifar10"])
  for fname in spec["train"] + spec["test"]:
    labels = rng.integers(0, 10, size=(n, 1), dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    (folder / fname).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
  archive = tmp_path / spec["archive"]
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  shutil.rmtree(folder)
  raw = archive.read_bytes()
  spec["known"] = datafiles.KnownFile(len(raw), hashlib.sha256(raw).hexdigest())
  spec["records"] = {f: n for f in spec["records"]}
  monkeypatch.setitem(wrn_ip._BINARY, "cifar10", spec)
  return spec


def test_cifar_archive_verified_then_read(tmp_path, monkeypatch) -> None:
  _fake_cifar10(tmp_path, monkeypatch)
  assert len(wrn_ip.load("cifar10", "train", str(tmp_path))) == 5 * 4
  assert len(wrn_ip.load("cifar10", "test", str(tmp_path))) == 4


def test_cifar_archive_garbled_or_truncated(tmp_path, monkeypatch) -> None:
  spec = _fake_cifar10(tmp_path, monkeypatch)
  archive = tmp_path / spec["archive"]
  good = archive.read_bytes()
  _garble(archive)
  with pytest.raises(errors.DataError, match=f"{archive} is damaged.*sha256"):
    wrn_ip.load("cifar10", "train", str(tmp_path))
  unreadable = f"{archive} (is not a readable .tar.gz archive|is damaged: no member)"
  with pytest.raises(errors.DataError, match=unreadable):  # where tarfile stops reading
    wrn_ip.load("cifar10", "train", str(tmp_path), verify=False)
  archive.write_bytes(good[: len(good) - 100])
  with pytest.raises(errors.DataError, match=f"{archive} is truncated: {len(good) - 100:,} bytes"):
    wrn_ip.load("cifar10", "train", str(tmp_path))
  with pytest.raises(errors.DataError, match="not a readable .tar.gz archive"):
    wrn_ip.load("cifar10", "train", str(tmp_path), verify=False)
  archive.write_bytes(b"not an archive at all")
  with pytest.raises(errors.DataError, match="not a readable .tar.gz archive"):
    wrn_ip.load("cifar10", "train", str(tmp_path), verify=False)


def test_cifar_batch_truncated_or_garbled(tmp_path, monkeypatch) -> None:
  spec = _fake_cifar10(tmp_path, monkeypatch)
  with tarfile.open(tmp_path / spec["archive"]) as tar:
    tar.extractall(tmp_path, filter="data")
  batch = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
  raw = batch.read_bytes()
  batch.write_bytes(raw[:-100])
  with pytest.raises(errors.DataError, match=f"{batch} is 12,192 bytes, expected 12,292"):
    wrn_ip.load("cifar10", "test", str(tmp_path))
  with pytest.raises(
    errors.DataError, match="not a positive multiple of the 3073-byte CIFAR record"
  ):
    wrn_ip.load("cifar10", "test", str(tmp_path), verify=False)
  batch.write_bytes(b"\xff" + raw[1:])  # a label byte garbled
  with pytest.raises(errors.DataError, match="has label 255, but cifar10 has 10 classes"):
    wrn_ip.load("cifar10", "test", str(tmp_path))


def test_cifar_data_dir_missing_or_unset(tmp_path) -> None:
  with pytest.raises(errors.DataError, match=r"--config.data_dir=\S*nope does not exist"):
    wrn_ip.load("cifar10", "train", str(tmp_path / "nope"))
  with pytest.raises(errors.DataError) as e:
    wrn_ip.load("cifar10", "train", None)
  msg = str(e.value)
  assert "set --config.data_dir to the folder holding cifar-10-binary.tar.gz" in msg
  assert msg.endswith(")") and "\n" not in msg  # the TFDS reason is shortened, not cut mid-word
  with pytest.raises(errors.ConfigError, match="needs --config.data_dir"):
    wrn_ip.load("cifar10", "train", None, "binary")


def test_verify_file_reports_size_before_hashing(tmp_path) -> None:
  f = tmp_path / "x.bin"
  f.write_bytes(b"abcd")
  known = datafiles.KnownFile(4, hashlib.sha256(b"abcd").hexdigest())
  datafiles.verify_file(f, known)
  with pytest.raises(errors.DataError, match="is truncated: 4 bytes, expected 5"):
    datafiles.verify_file(f, datafiles.KnownFile(5, known.sha256))
  with pytest.raises(errors.DataError, match="is missing"):
    datafiles.verify_file(tmp_path / "y.bin", known)
  datafiles.verify_file(tmp_path / "y.bin", known, verify=False)  # opted out: not looked at
  gz = tmp_path / "g.gz"
  gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abc"))
  with pytest.raises(errors.DataError, match="truncated: header says \\(5,\\), 3 bytes"):
    datafiles.read_idx(gz)
