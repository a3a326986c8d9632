"""On-device WRN augmentation: bit-equal to the host pipeline, batch by batch, host by host."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from train.wrn import augment, input_pipeline

DS = input_pipeline.synthetic(300, 10, seed=0)


def test_crop_flip_equals_the_host_augment_for_every_offset_and_flip():
  images = DS.images[:162]
  # every (oy, ox, flip) combination once: 9 x 9 x 2 = 162 images
  oy, ox, flip = (a.ravel() for a in np.meshgrid(np.arange(9), np.arange(9), [False, True]))

  class Fixed:  # a generator stand-in returning these draws, in the host augment's call order
    def __init__(self):
      self.calls = iter([oy, ox])

    def integers(self, lo, hi, size):
      return next(self.calls)

    def random(self, size):
      return np.where(flip, 0.0, 0.9)

  host = input_pipeline.augment(images, Fixed())
  dev = jax.jit(augment.crop_flip)(images, oy.astype(np.int32), ox.astype(np.int32), flip)
  np.testing.assert_array_equal(np.asarray(dev), host)
  # not vacuous: the crops differ from the unaugmented images and among each other
  assert (host != images).any() and len({h.tobytes() for h in host}) == len(host)


@pytest.mark.parametrize("num_hosts", [1, 2])
def test_on_device_batches_equal_train_batches_bit_for_bit(num_hosts):
  step = jax.jit(augment.on_device)
  for epoch in (0, 3):
    for host in range(num_hosts):
      kw = dict(global_batch=64, seed=7, epoch=epoch, host_id=host, num_hosts=num_hosts)
      ref = list(input_pipeline.train_batches(DS, **kw))
      raw = list(augment.raw_train_batches(DS, **kw))
      assert len(ref) == len(raw) == 4
      for r, b in zip(ref, raw, strict=True):
        assert b["image"].dtype == np.uint8
        out = step(b)
        np.testing.assert_array_equal(np.asarray(out["label"]), r["label"])
        assert np.asarray(out["image"]).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(out["image"]), r["image"])


def test_resume_mid_epoch_sees_the_same_raw_batches():
  kw = dict(global_batch=64, seed=1, epoch=2)
  full = list(augment.raw_train_batches(DS, **kw))
  resumed = list(augment.raw_train_batches(DS, start_batch=2, **kw))
  for a, b in zip(full[2:], resumed, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_bad_host_split_is_refused():
  with pytest.raises(ValueError, match="divisible by the number of hosts"):
    next(augment.raw_train_batches(DS, global_batch=63, seed=0, epoch=0, num_hosts=2))


def test_flip_false_keeps_the_crops_and_never_mirrors():
  kw = dict(global_batch=64, seed=3, epoch=1)
  with_flips = list(augment.raw_train_batches(DS, **kw))
  without = list(augment.raw_train_batches(DS, flip=False, **kw))
  assert any(b["flip"].any() for b in with_flips)  # not vacuous: flips are drawn by default
  for a, b in zip(with_flips, without, strict=True):
    assert not b["flip"].any()
    for k in ("image", "label", "oy", "ox"):
      np.testing.assert_array_equal(a[k], b[k])


def test_crop_false_and_flip_false_train_on_the_images_as_they_are():
  kw = dict(global_batch=64, seed=3, epoch=1)
  cropped = list(augment.raw_train_batches(DS, flip=False, **kw))
  plain = list(augment.raw_train_batches(DS, flip=False, crop=False, **kw))
  assert any((b["oy"] != input_pipeline.PAD).any() for b in cropped)  # not vacuous: crops move
  for a, b in zip(cropped, plain, strict=True):
    np.testing.assert_array_equal(a["label"], b["label"])  # same examples, same order
    out = np.asarray(augment.on_device(jax.tree.map(np.asarray, b))["image"])
    np.testing.assert_array_equal(out, input_pipeline.normalize(b["image"]))
