"""WRN augmentation on the device: crop and flip the raw uint8 batch inside the step, same bits as the host.

The host pipeline (``input_pipeline.train_batches``) pads, crops, flips and normalises every image in
numpy, about 10,800 images/s on one core: slower than one GPU trains WRN-28-10. Here the host only
gathers the raw uint8 batch and draws the crop offsets and flips, from the same generator, seeded
with (seed, epoch, batch, 0), in the same order; the device does the pixel work. The result is
bit-identical to the host pipeline's batch (so resuming at any batch, with any host count, sees what
it saw before).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from train.wrn import input_pipeline

PAD = input_pipeline.PAD


def draws(
  seed: int, epoch: int, batch: int, global_batch: int, offset: int = 0, size: int | None = None
) -> dict[str, np.ndarray]:
  """Crop offsets and flips of one global batch, this host's slice: the host pipeline's own draws.

  ``input_pipeline.augment_draws`` from ``input_pipeline.batch_rng(seed, epoch, batch)``, for all
  ``global_batch`` images, then ``[offset, offset + size)`` kept.

  Args:
    seed, epoch, batch: the run seed, the epoch and the batch's index in it.
    global_batch: images in the global batch.
    offset: first image of this host's slice.
    size: images in the slice (default: global_batch - offset).

  Returns:
    {"oy": int32 (size,), "ox": int32 (size,), "flip": bool (size,)}.

  Example:
    ``draws(0, 0, 0, 128)["oy"]`` are the row offsets ``train_batches(seed=0, epoch=0)`` cropped
    its first batch with.
  """
  size = global_batch - offset if size is None else size
  rng = input_pipeline.batch_rng(seed, epoch, batch)
  oy, ox, flip = input_pipeline.augment_draws(rng, size, offset, global_batch)
  return {"oy": oy.astype(np.int32), "ox": ox.astype(np.int32), "flip": flip}


def crop_flip(images: jax.Array, oy: jax.Array, ox: jax.Array, flip: jax.Array) -> jax.Array:
  """Reflect-pad by PAD, crop H x W at (oy, ox), mirror left-right where ``flip``: uint8 in, uint8 out.

  ``out[n, i, j] = pad(images)[n, oy[n] + i, ox[n] + (W - 1 - j if flip[n] else j)]``.

  Args:
    images: uint8 (B, H, W, C).
    oy, ox: int (B,) offsets in [0, 2 PAD].
    flip: bool (B,).

  Returns:
    uint8 (B, H, W, C).
  """
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
  crops = jax.vmap(lambda im, y, x: lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(padded, oy, ox)
  return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


# input_pipeline.normalize of every uint8 value in every channel, computed by numpy once: a lookup in
# it gives the host's float32 bits on any device (XLA would divide by multiplying with 1 / std,
# one ulp off in some pixels).
_TABLE = input_pipeline.normalize(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))


def normalize(images: jax.Array) -> jax.Array:
  """(x - mean) / std per channel on the 0..255 scale, float32, bit-equal to ``input_pipeline.normalize``.

  ``out[..., c] = T[x[..., c], c]`` with ``T[v, c] = (v - mean_c) / std_c`` tabulated by numpy.

  Args:
    images: uint8 (..., 3).

  Returns:
    float32 (..., 3).
  """
  return jnp.asarray(_TABLE)[images.astype(jnp.int32), jnp.arange(3)]


def on_device(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """A raw batch (``raw_train_batches``) -> the host pipeline's batch: normalised augmented images.

  Call it inside the jitted or pmapped step, on the device's share of the batch.

  Returns:
    {"image": float32 (B, 32, 32, 3), "label": int32 (B,)}.
  """
  image = crop_flip(batch["image"], batch["oy"], batch["ox"], batch["flip"])
  return {"image": normalize(image), "label": batch["label"]}


def raw_train_batches(
  ds: input_pipeline.ArrayDataset,
  *,
  global_batch: int,
  seed: int,
  epoch: int,
  host_id: int = 0,
  num_hosts: int = 1,
  start_batch: int = 0,
  flip: bool = True,
  crop: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
  """``input_pipeline.train_batches`` without the pixel work: the same examples, uint8, with draws.

  Args: as ``input_pipeline.train_batches``; ``flip=False`` keeps the crops and never mirrors
  (digits: a mirrored digit is another shape); ``crop=False`` crops every image at offset PAD, which
  is the image itself (no augmentation with both off). The draws are made either way, so the
  generator's stream does not depend on these switches.

  Yields:
    {"image": uint8 (B_local, 32, 32, 3), "label": int32 (B_local,), "oy", "ox": int32 (B_local,),
    "flip": bool (B_local,)}; ``on_device`` of it equals ``train_batches``' batch bit for bit.
  """
  for b, batch in input_pipeline.epoch_batches(
    ds,
    global_batch=global_batch,
    seed=seed,
    epoch=epoch,
    host_id=host_id,
    num_hosts=num_hosts,
    start_batch=start_batch,
  ):
    local = global_batch // num_hosts  # num_hosts checked by epoch_batches
    d = draws(seed, epoch, b, global_batch, host_id * local, local)
    if not flip:
      d["flip"] = np.zeros_like(d["flip"])
    if not crop:
      d["oy"] = np.full_like(d["oy"], input_pipeline.PAD)
      d["ox"] = np.full_like(d["ox"], input_pipeline.PAD)
    yield {**batch, **d}
