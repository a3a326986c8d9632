"""Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016) in Flax NNX, with Sparseout or dropout in each block.

Follows szagoruyko/wide-residual-networks: widths 16, 16k, 32k, 64k; (d - 4) / 6 pre-activation basic blocks
per group; block = BN-ReLU-conv3x3(stride) then BN-ReLU-[regulariser]-conv3x3; 1x1 strided shortcut conv on the
activated input when the width changes; final BN-ReLU, global average pool, dense. Initialisation as the
reference's ``utils.py``: convolutions (no bias) and the dense layer He-normal over fan-in (PyTorch's
``kaiming_normal_``: std = sqrt(2 / fan_in)), dense bias 0, BatchNorm scale U[0, 1) (``torch.rand``) and bias 0.
The 3x3 convs pad 1 pixel on every side (PyTorch style), so strided convs see the same pixels as the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

import sparseout_jax.nnx as so_nnx
from sparseout_jax import remat_policy

Regularizer = Literal["sparseout", "dropout", "none"]
Placement = Literal["after_relu", "before_bn"]

REGULARIZERS: tuple[str, ...] = ("sparseout", "dropout", "none")
PLACEMENTS: tuple[str, ...] = ("after_relu", "before_bn")

# He-normal over fan-in, std = sqrt(2 / (k * k * in_channels)): torch's kaiming_normal_ default, as the
# reference's conv_params and linear_params ("normal" is untruncated, as torch's).
HE_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
# BatchNorm scale U[0, 1): the reference's bnparams uses torch.rand(n).
BN_SCALE_INIT = nnx.initializers.uniform(1.0)
_PAD1 = ((1, 1), (1, 1))

NoiseFactory = Callable[[], nnx.Module | None]
"""Makes one block's noise layer (called once per block), or None for no noise."""


def _conv(
  cin: int, cout: int, kernel: int, stride: int, dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.Conv:
  """A bias-free NHWC convolution with PyTorch-style symmetric padding ((k - 1) / 2 pixels)."""
  return nnx.Conv(
    cin,
    cout,
    (kernel, kernel),
    strides=(stride, stride),
    padding=_PAD1 if kernel == 3 else "VALID",
    use_bias=False,
    kernel_init=HE_NORMAL,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


def _bn(
  features: int, momentum: float, axis_name: str | None, dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.BatchNorm:
  """BatchNorm with float32 scale/bias/statistics; batch statistics pmean'd over `axis_name` when set."""
  return nnx.BatchNorm(
    features,
    momentum=momentum,
    epsilon=1e-5,
    axis_name=axis_name,
    scale_init=BN_SCALE_INIT,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


def make_regularizer(
  kind: str, rate: float, q: float, gradient: str, record_sparsity: bool = False
) -> so_nnx.Sparseout | nnx.Dropout | None:
  """Build the per-block noise layer: Sparseout(rate, q), Flax Dropout(rate), or None for no noise.

  Args:
    kind: "sparseout", "dropout" or "none".
    rate: drop probability r in [0, 1).
    q: Sparseout exponent (> 0); ignored by dropout.
    gradient: Sparseout backward rule ("exact" or "reference").
    record_sparsity: the Sparseout layer sows the sparsity records of its input on every call.

  Returns:
    A layer called as `layer(x, deterministic=..., rngs=key)`, or None when there is no noise.
  """
  if kind == "none" or rate == 0.0:
    return None
  if kind == "sparseout":
    return so_nnx.Sparseout(
      rate, q=q, gradient=gradient, record_sparsity=record_sparsity, rngs=None
    )
  if kind == "dropout":
    return nnx.Dropout(rate, rngs=None)
  raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {kind!r}")


def _noise_then_conv(noise: nnx.Module, conv: nnx.Conv, x: jax.Array, key: jax.Array) -> jax.Array:
  """conv(noise(x)) in training: the region that ``remat_noise`` / ``remat_output`` recompute."""
  return conv(noise(x, deterministic=False, rngs=key))


# Everything saved but Sparseout's output, which the backward pass recomputes from x and the mask.
_NOISE_OUTPUT_REMAT = nnx.remat(_noise_then_conv, policy=remat_policy)
_NOISE_REMAT = nnx.remat(_noise_then_conv)


def _named_output(noise: nnx.Module | None) -> bool:
  """The layer's output is named for ``remat_policy``: Sparseout, unless q is the number 2 (dropout)."""
  return isinstance(noise, so_nnx.Sparseout) and not (isinstance(noise.q, float) and noise.q == 2.0)


class BasicBlock(nnx.Module):
  """Pre-activation WRN block: x + conv(reg(relu(bn(conv(relu(bn(x))))))), 1x1 conv shortcut on width change."""

  def __init__(
    self,
    cin: int,
    cout: int,
    stride: int,
    *,
    noise: NoiseFactory,
    placement: str,
    bn_momentum: float,
    axis_name: str | None,
    dtype: jnp.dtype,
    remat_noise: bool = False,
    remat_output: bool = True,
    rngs: nnx.Rngs,
  ) -> None:
    """Create the block's two BN-ReLU-conv units, its noise layer and (if widths differ) its shortcut.

    Args:
      cin: input channels.
      cout: output channels.
      stride: stride of the first 3x3 conv and of the shortcut.
      noise: makes this block's noise layer (``make_regularizer`` with its arguments bound), or
        returns None for no noise.
      placement: "after_relu" (noise on relu(bn(conv1)), where the WRN reference puts its dropout and paper
        4.3 its Sparseout: between the two convolutions) or "before_bn" (noise on conv1's output before BN; an
        alternative this repository offers for experiments, from neither the paper nor the reference).
      bn_momentum: running-average momentum of BatchNorm (Flax convention; 0.9 == PyTorch's 0.1).
      axis_name: pmap axis over which BN batch statistics are averaged (None outside pmap).
      dtype: compute dtype (parameters and BN statistics stay float32).
      remat_noise: in training, recompute the noise layer (its mask from the key) and the second
        convolution's input in the backward pass instead of keeping them (``nnx.remat``): the step
        keeps neither the noised activation nor the mask. Same values and gradients.
      remat_output: in training (``after_relu``, and not ``remat_noise``), recompute only
        Sparseout's output from its input and mask (``sparseout_jax.remat_policy``): the step keeps
        the mask and the input, as dropout's keeps the mask and the output. No effect on dropout.
      rngs: parameter initialisation keys.
    """
    self.remat_noise = bool(remat_noise)
    self.remat_output = bool(remat_output)
    self.bn0 = _bn(cin, bn_momentum, axis_name, dtype, rngs)
    self.conv0 = _conv(cin, cout, 3, stride, dtype, rngs)
    self.bn1 = _bn(cout, bn_momentum, axis_name, dtype, rngs)
    self.conv1 = _conv(cout, cout, 3, 1, dtype, rngs)
    self.noise = noise()
    self.placement = placement
    self.shortcut = _conv(cin, cout, 1, stride, dtype, rngs) if cin != cout else None

  def __call__(self, x: jax.Array, *, train: bool, key: jax.Array | None) -> jax.Array:
    """Apply the block.

    Args:
      x: (N, H, W, cin) input.
      train: batch statistics + noise when True; running averages and no noise when False.
      key: PRNG key for this block's noise mask (needed when train and the block has noise).

    Returns:
      (N, H / stride, W / stride, cout) output.
    """
    o1 = nnx.relu(self.bn0(x, use_running_average=not train))
    y = self.conv0(o1)
    if self.noise is not None and self.placement == "before_bn":
      y = self.noise(y, deterministic=not train, rngs=key)
    o2 = nnx.relu(self.bn1(y, use_running_average=not train))
    after_relu = self.noise is not None and self.placement == "after_relu"
    if after_relu and train and self.remat_noise:
      z = _NOISE_REMAT(self.noise, self.conv1, o2, key)
    elif after_relu and train and self.remat_output and _named_output(self.noise):
      z = _NOISE_OUTPUT_REMAT(self.noise, self.conv1, o2, key)
    else:
      if after_relu:
        o2 = self.noise(o2, deterministic=not train, rngs=key)
      z = self.conv1(o2)
    return z + (self.shortcut(o1) if self.shortcut is not None else x)


class WideResNet(nnx.Module):
  """WRN-depth-width for 32x32 images: conv3x3(16) -> 3 groups of blocks -> BN-ReLU -> avg pool -> dense."""

  def __init__(
    self,
    depth: int = 28,
    width: int = 10,
    num_classes: int = 10,
    *,
    regularizer: str = "sparseout",
    rate: float = 0.3,
    q: float = 2.0,
    placement: str = "after_relu",
    gradient: str = "exact",
    bn_momentum: float = 0.9,
    axis_name: str | None = None,
    dtype: jnp.dtype = jnp.float32,
    record_sparsity: bool = False,
    remat_noise: bool = False,
    remat_output: bool | None = None,
    rngs: nnx.Rngs,
  ) -> None:
    """Build WRN-depth-width.

    Args:
      depth: total depth d; (d - 4) must be a positive multiple of 6 (blocks per group n = (d - 4) / 6).
      width: widening factor k >= 1 (group widths 16k, 32k, 64k).
      num_classes: size of the output layer.
      regularizer: per-block noise, "sparseout" (default), "dropout" (Flax Dropout) or "none".
      rate: drop probability r in [0, 1) of the noise layer.
      q: Sparseout exponent q > 0 (q = 2 is inverted dropout).
      placement: "after_relu" (default, WRN reference and paper 4.3) or "before_bn" (an experiment).
      gradient: Sparseout backward rule, "exact" or "reference".
      bn_momentum: BatchNorm running-average momentum (Flax convention).
      axis_name: pmap axis name for cross-device BN statistics; None when not under pmap.
      dtype: compute dtype, float32 or bfloat16 (params and BN statistics are float32 either way).
      record_sparsity: every Sparseout layer records the sparsity of its input (train and eval).
      remat_noise: every block recomputes its noise and the second conv's input in the backward
        pass rather than keeping them (memory for compute; see ``BasicBlock``).
      remat_output: every Sparseout block recomputes only the noise's output from its input and
        mask in the backward pass, so the step need not keep the output beside the input (see
        ``BasicBlock``). None (default): on where the model is built on a GPU or TPU, off on CPU.
        On CPU XLA already keeps no more than dropout's step without it, and with it a bfloat16
        WRN-28-10 step keeps 2.25 bytes more per noised element (``benchmarks/results/memory_cpu.md``);
        on the GPU the step without it kept one activation more than dropout's.
      rngs: parameter initialisation keys (stream "params").
    """
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
      raise ValueError(
        f"depth must be an int with (depth - 4) a positive multiple of 6, got {depth!r}"
      )
    if not isinstance(width, int) or width < 1:
      raise ValueError(f"width must be a positive int, got {width!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if regularizer not in REGULARIZERS:
      raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
    if placement not in PLACEMENTS:
      raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if not 0.0 <= float(rate) < 1.0:
      raise ValueError(f"rate (drop probability) must be in [0, 1), got {rate!r}")
    if remat_output is None:
      remat_output = jax.default_backend() != "cpu"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
      raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    self.depth, self.width, self.num_classes = depth, width, num_classes
    self.dtype = dtype
    # One factory for every block; calling it here checks q and the rule once (the library raises).
    noise = functools.partial(
      make_regularizer, regularizer, float(rate), float(q), gradient, record_sparsity
    )
    noise()
    n = (depth - 4) // 6
    widths = (16, 16 * width, 32 * width, 64 * width)
    self.stem = _conv(3, widths[0], 3, 1, dtype, rngs)
    blocks = []
    cin = widths[0]
    for group, stride in zip(range(3), (1, 2, 2), strict=True):
      for i in range(n):
        blocks.append(
          BasicBlock(
            cin,
            widths[group + 1],
            stride if i == 0 else 1,
            noise=noise,
            placement=placement,
            bn_momentum=bn_momentum,
            axis_name=axis_name,
            dtype=dtype,
            remat_noise=remat_noise,
            remat_output=remat_output,
            rngs=rngs,
          )
        )
        cin = widths[group + 1]
    self.blocks = nnx.List(blocks)
    self.bn = _bn(cin, bn_momentum, axis_name, dtype, rngs)
    self.head = nnx.Linear(
      cin, num_classes, kernel_init=HE_NORMAL, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )

  def __call__(
    self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None
  ) -> jax.Array:
    """Logits for a batch of images.

    Args:
      x: (N, 32, 32, 3) normalised images (any spatial size divisible by 4 works).
      train: True for batch statistics (updating the running averages) and noise; False for evaluation.
      key: PRNG key; block b uses fold_in(key, b). Required when train and the model has noise.

    Returns:
      (N, num_classes) float32 logits.
    """
    has_noise = any(b.noise is not None for b in self.blocks)
    if train and has_noise and key is None:
      raise ValueError("WideResNet(train=True) with a noise layer needs a PRNG `key`")
    h = self.stem(x.astype(self.dtype))
    for b, block in enumerate(self.blocks):
      bkey = jax.random.fold_in(key, b) if (train and has_noise) else None
      h = block(h, train=train, key=bkey)
    h = nnx.relu(self.bn(h, use_running_average=not train))
    h = jnp.mean(h, axis=(1, 2))
    return self.head(h).astype(jnp.float32)
