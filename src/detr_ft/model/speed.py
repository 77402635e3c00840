"""Layout and fusion for speed, numerics unchanged up to float rounding.

- Channels-last convolutions (training and inference): oneDNN on CPUs and
  tensor cores on CUDA run NHWC convolutions faster than NCHW ones (measured on
  a 2-core CPU: detr-tiny 1.3-1.4x per training step, DETR-R50 1.1-1.3x;
  ``benchmarks/README.md``). ``detection_outputs`` hands such a model its
  pixels in that layout.
- Batch norms folded into the convolution before them (inference only): a
  frozen or eval-mode batch norm is a per-channel affine map, which the
  convolution's weights and bias absorb, saving a pass over every activation;
  the activation after them, and the one after each residual sum, then works in
  place (a fresh multi-MB buffer per layer costs page faults on a CPU).
"""

from __future__ import annotations

import torch
from torch import nn

# A residual layer of transformers' ResNet and RT-DETR ResNet (basic and bottleneck) has these
# parts: the activation acts on ``layer(x) + shortcut(x)``, a sum made in place on ``layer``'s
# fresh output, which nothing else holds.
RESIDUAL_PARTS = ("layer", "shortcut", "activation")

# (convolution, normalisation) attribute pairs of the conv -> norm blocks in the supported
# families' backbones and encoders: transformers' ResNet and RT-DETR ResNet conv layers and
# shortcuts ("convolution", "normalization"), RT-DETR's ConvNormLayer ("conv", "norm").
CONV_NORM_PAIRS = (("convolution", "normalization"), ("conv", "norm"))


def channels_last_helps(device: torch.device | str) -> bool:
    """CPU and CUDA run channels-last convolutions faster; MPS and Gaudi keep their own layout."""
    return torch.device(device).type in ("cpu", "cuda")


def use_channels_last(model: nn.Module) -> nn.Module:
    """Convert the model's convolution weights to channels-last, in place, and mark it so that
    ``model_pixels`` gives it its input in that layout too."""
    model.to(memory_format=torch.channels_last)
    model.detr_ft_channels_last = True
    return model


def channels_last_where_it_helps(model: nn.Module, device: torch.device | str, wanted: bool = True) -> bool:
    """``use_channels_last`` when ``wanted`` and on a device where it is faster; whether it was."""
    if wanted and channels_last_helps(device):
        use_channels_last(model)
        return True
    return False


def model_pixels(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``pixel_values`` in the layout the model's convolutions use (no copy when it already is)."""
    if getattr(model, "detr_ft_channels_last", False) and pixel_values.dim() == 4:
        return pixel_values.contiguous(memory_format=torch.channels_last)
    return pixel_values


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every conv -> batch-norm pair (``CONV_NORM_PAIRS``) into one biased convolution,
    in place, and let the block's activation (ReLU, ...) work in place, as the activation of
    each residual sum (``RESIDUAL_PARTS``); the number folded.
    For inference: the model must be in eval mode (running statistics, not batch statistics),
    and is no longer the architecture it was trained as."""
    if model.training:
        raise ValueError("fold_batch_norms: put the model in eval mode first")
    folded = 0
    for block in list(model.modules()):
        for conv_name, norm_name in CONV_NORM_PAIRS:
            conv, norm = getattr(block, conv_name, None), getattr(block, norm_name, None)
            if isinstance(conv, nn.Conv2d) and _is_batch_norm(norm):
                setattr(block, conv_name, _folded(conv, norm))
                setattr(block, norm_name, nn.Identity())
                folded += 1
                _activation_in_place(block)  # conv -> activation: its input is the fresh conv output
        if all(hasattr(block, part) for part in RESIDUAL_PARTS):
            _activation_in_place(block)
    return folded


def _activation_in_place(block: nn.Module) -> None:
    """The block's activation overwrites its input (used nowhere else): no new buffer for it."""
    activation = getattr(block, "activation", None)
    if isinstance(activation, nn.Module) and hasattr(activation, "inplace"):
        activation.inplace = True


def _is_batch_norm(module) -> bool:
    """nn.BatchNorm2d with running statistics, or transformers' frozen batch norms (same buffers)."""
    if isinstance(module, nn.BatchNorm2d):
        return module.track_running_stats and module.affine
    return (module is not None and type(module).__name__.endswith("FrozenBatchNorm2d")
            and all(hasattr(module, k) for k in ("weight", "bias", "running_mean", "running_var")))


@torch.no_grad()
def _folded(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    eps = getattr(norm, "eps", 1e-5)  # transformers' frozen batch norms use 1e-5
    scale = norm.weight.float() * torch.rsqrt(norm.running_var.float() + eps)
    shift = norm.bias.float() - norm.running_mean.float() * scale
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    weight = conv.weight.float() * scale.view(-1, 1, 1, 1)
    bias = shift + (conv.bias.float() * scale if conv.bias is not None else 0.0)
    fused.weight.copy_(weight.to(conv.weight.dtype))
    fused.bias.copy_(bias.to(conv.weight.dtype))
    if conv.weight.is_contiguous(memory_format=torch.channels_last):
        fused.to(memory_format=torch.channels_last)
    return fused.train(conv.training)
