"""Layout and fusion for speed, numerics unchanged up to float rounding.

- Channels-last convolutions (training and inference): oneDNN on CPUs and
  tensor cores on CUDA run NHWC convolutions faster than NCHW ones
  (``benchmarks/README.md``). ``detection_outputs`` hands such a model its
  pixels in that layout.
- Batch norms folded into the convolution before them (inference): a frozen or
  eval-mode batch norm is a per-channel affine map, which the convolution's
  weights and bias absorb, saving a pass over every activation; the activation
  after them, and the one after each residual sum, then works in place (a fresh
  multi-MB buffer per layer costs page faults on a CPU).
- Frozen batch norms applied by the convolution before them in training too
  (``fuse_frozen_norms``): the convolution scales its weights by the norm's
  factors at every call, so the norm's two passes over the activation go, and
  under bf16 autocast so does their fp32 copy of it (the norm's fp32 factors
  promote the bf16 convolution output). The state dict and the gradients stay
  those of the unfused model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

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
    """Convert the model's convolution weights to channels-last, in place; ``model_pixels`` then
    gives it its input in that layout too."""
    return model.to(memory_format=torch.channels_last)


def channels_last_where_it_helps(model: nn.Module, device: torch.device | str, wanted: bool = True) -> bool:
    """``use_channels_last`` when ``wanted`` and on a device where it is faster; whether it was."""
    if wanted and channels_last_helps(device):
        use_channels_last(model)
        return True
    return False


def for_training(model: nn.Module, device: torch.device | str, channels_last: bool = True) -> nn.Module:
    """What ``detr-ft train`` does to its model before training, in place: channels-last where it
    helps (and ``channels_last``), frozen batch norms fused into their convolutions."""
    channels_last_where_it_helps(model, device, channels_last)
    fuse_frozen_norms(model)
    return model


def model_pixels(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``pixel_values`` in the layout of the model's first convolution (no copy when it already is)."""
    # the first convolution whose layout shows (a 1x1 or one-channel kernel is both NCHW and NHWC)
    weight = next((p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2:].numel() > 1),
                  None)
    if (weight is not None and pixel_values.dim() == 4
            and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()):
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
    for block, conv_name, conv, norm_name, norm in _conv_norm_pairs(model):
        if _is_batch_norm(norm):
            setattr(block, conv_name, _folded(conv, norm))
            setattr(block, norm_name, nn.Identity())
            folded += 1
            _activation_in_place(block)  # conv -> activation: its input is the fresh conv output
    for block in model.modules():
        if all(hasattr(block, part) for part in RESIDUAL_PARTS):
            _activation_in_place(block)
    return folded


class FrozenNormConv2d(nn.Conv2d):
    """A convolution that applies the frozen batch norm after it (``frozen_norm``) itself: its
    weights scaled by the norm's per-channel factor and the norm's shift as its bias, computed
    from the norm's buffers at every call. Made by ``fuse_frozen_norms``; trains as the pair did."""

    frozen_norm: nn.Module  # held outside ``_modules``: the norm stays where it is in the state dict

    @classmethod
    def around(cls, conv: nn.Conv2d, norm: nn.Module) -> "FrozenNormConv2d":
        """The fused convolution holding ``conv``'s own parameters (no copy; the same state-dict
        values) and applying ``norm``."""
        fused = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device="meta")
        fused.weight, fused.bias = conv.weight, conv.bias
        fused.__dict__["frozen_norm"] = norm  # an attribute, not a submodule
        return fused.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = (t.to(self.weight.dtype) for t in _affine(self.frozen_norm))
        bias = shift if self.bias is None else shift + self.bias * scale
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bias)


class FusedAwayNorm(nn.Module):
    """A frozen batch norm whose map the convolution before it applies: passes its input on.
    Holds the norm's buffers, under the same state-dict keys."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.eps = getattr(norm, "eps", 1e-5)
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(norm, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fuse_frozen_norms(model: nn.Module) -> int:
    """Let each convolution followed by a frozen batch norm (``CONV_NORM_PAIRS``; the norms of a
    pretrained ResNet backbone, which never change in training) apply that norm itself
    (``FrozenNormConv2d``), in place; the number fused. For training and inference alike: the
    state dict keeps its keys and values, gradients are the pair's up to float rounding.
    Trainable ``nn.BatchNorm2d`` is left alone."""
    fused = 0
    for block, conv_name, conv, norm_name, norm in _conv_norm_pairs(model):
        if type(conv) is nn.Conv2d and _is_frozen_batch_norm(norm):
            away = FusedAwayNorm(norm)
            setattr(block, conv_name, FrozenNormConv2d.around(conv, away))
            setattr(block, norm_name, away)
            fused += 1
    return fused


def _conv_norm_pairs(model: nn.Module):
    """(block, conv attribute, conv, norm attribute, norm) for each conv -> norm pair of
    ``CONV_NORM_PAIRS`` (the modules listed first: callers replace them as they go)."""
    for block in list(model.modules()):
        for conv_name, norm_name in CONV_NORM_PAIRS:
            conv, norm = getattr(block, conv_name, None), getattr(block, norm_name, None)
            if isinstance(conv, nn.Conv2d) and norm is not None:
                yield block, conv_name, conv, norm_name, norm


def _activation_in_place(block: nn.Module) -> None:
    """The block's activation overwrites its input (used nowhere else): no new buffer for it."""
    activation = getattr(block, "activation", None)
    if isinstance(activation, nn.Module) and hasattr(activation, "inplace"):
        activation.inplace = True


def _is_batch_norm(module) -> bool:
    """nn.BatchNorm2d with running statistics, or transformers' frozen batch norms (same buffers)."""
    if isinstance(module, nn.BatchNorm2d):
        return module.track_running_stats and module.affine
    return isinstance(module, FusedAwayNorm) or _is_frozen_batch_norm(module)


def _is_frozen_batch_norm(module) -> bool:
    """transformers' frozen batch norms (DETR's, RT-DETR's, ...): buffers only, nothing trained."""
    return (module is not None and type(module).__name__.endswith("FrozenBatchNorm2d")
            and all(hasattr(module, k) for k in ("weight", "bias", "running_mean", "running_var")))


def _affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch norm's map in eval mode as (scale, shift) per channel, in float32 or wider."""
    eps = getattr(norm, "eps", 1e-5)  # transformers' frozen batch norms use 1e-5
    weight, bias, mean, var = (t.to(torch.promote_types(t.dtype, torch.float32))
                               for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var))
    scale = weight * torch.rsqrt(var + eps)
    return scale, bias - mean * scale


@torch.no_grad()
def _folded(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A biased convolution computing ``norm(conv(x))`` (eval-mode norm), in ``conv``'s layout."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    wide = torch.promote_types(conv.weight.dtype, torch.float32)
    weight, bias = fuse_conv_bn_weights(
        conv.weight.to(wide), None if conv.bias is None else conv.bias.to(wide),
        *(t.to(wide) for t in (norm.running_mean, norm.running_var)), getattr(norm, "eps", 1e-5),
        *(t.to(wide) for t in (norm.weight, norm.bias)))
    fused.weight.copy_(weight.to(conv.weight.dtype))
    fused.bias.copy_(bias.to(conv.weight.dtype))
    if conv.weight.is_contiguous(memory_format=torch.channels_last):
        fused.to(memory_format=torch.channels_last)
    return fused.train(conv.training)
