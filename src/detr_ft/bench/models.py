"""The models both sides train: one initial state, detr-ft's module beside the stock one (the family's
transformers model computing its own loss from ``labels``)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from detr_ft.bench.config import GRAD_CLIP, R50, BenchConfig
from detr_ft.bench.measure import autocast


def r50_config(id2label: dict[int, str]):
    """DETR-R50's architecture (transformers ResNet-50 backbone, no timm), for random weights."""
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                            embedding_size=64, out_features=["stage4"])
    return DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                      backbone_config=backbone, num_labels=len(id2label), id2label=dict(id2label),
                      label2id={v: k for k, v in id2label.items()})


def trainable_backbone(model: nn.Module) -> int:
    from detr_ft.model.build import backbone_module

    backbone = backbone_module(model)
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad) if backbone is not None else 0


def bench_family(name: str):
    """(family, transformers config, the model's own resize) of ``--model NAME`` (a preset, ``detr-r50`` or
    a Hugging Face model directory), read without building the model; anything else is a ``UserError``."""
    from transformers import AutoConfig

    from detr_ft.errors import UserError
    from detr_ft.model.build import DETR_RESIZE, PRESETS, check_family, resize_from_processor
    from detr_ft.model.families import family_of, family_of_preset

    if name == R50:
        config = r50_config({0: "object"})
        return family_of(config), config, DETR_RESIZE
    if name in PRESETS:
        family = family_of_preset(name)
        family.require_available(f"--model {name}")
        factory, resize = PRESETS[name]
        return family, factory(1), resize
    local = Path(name).expanduser()
    if not (local / "config.json").is_file():
        raise UserError(f"--model {name}: bench runs a preset ({', '.join(PRESETS)}), {R50} or a Hugging Face "
                        f"model directory (with its config.json)")
    check_family(local, f"--model {name}")
    config = AutoConfig.from_pretrained(str(local))
    return family_of(config), config, resize_from_processor(str(local), {})


def bench_model(name: str, id2label: dict[int, str], seed: int) -> tuple[nn.Module, bool, str]:
    """(model in train mode, pretrained-like, a note on its trainable backbone)."""
    from detr_ft.model.build import build_model, model_from_config, set_backbone_trainable

    torch.manual_seed(seed)
    if name != R50:
        bundle = build_model(name, id2label)
        model = bundle.model
        how = ("pretrained weights (a new head for the bench's classes), the backbone trained as detr-ft train "
               "trains it" if bundle.pretrained else "random init, whole backbone trained with trainable batch norms")
        return model.train(), bundle.pretrained, (f"{name}: {how} ({trainable_backbone(model):,} backbone "
                                                  f"parameters), on both sides")
    model = model_from_config(r50_config(id2label))
    stock = trainable_backbone(model)
    set_backbone_trainable(model, pretrained=True)
    note = (f"{R50}: DETR-R50 architecture, random weights, frozen batch norms. Stock transformers would train "
            f"{stock:,} backbone parameters (its stage-name match freezes the whole ResNet by mistake); "
            f"equalised: both sides train stages 2-4 ({trainable_backbone(model):,} backbone parameters)")
    return model.train(), True, note


def param_groups(model: nn.Module, lr: float = 1e-4, lr_backbone: float = 1e-5) -> list[dict]:
    """The original example's AdamW groups: backbone parameters at lr_backbone."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if "backbone" not in n], "lr": lr},
            {"params": [p for n, p in named if "backbone" in n], "lr": lr_backbone}]


def adamw(model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """The original example's AdamW (per-tensor; ``fused``: torch's fused kernel, as detr-ft train runs it)."""
    return torch.optim.AdamW([g for g in param_groups(model) if g["params"]], lr=1e-4, weight_decay=1e-4,
                             fused=fused or None)


def trivial_loss(out) -> torch.Tensor:
    """A loss over every output the criterion reads (final and auxiliary layers), with no matching."""
    pairs = [(out.logits, out.boxes), *out.aux]
    return sum(logits.float().mean() + boxes.float().mean() for logits, boxes in pairs)


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class Sides:
    """detr-ft's module, the stock model and a bare copy, all from one initial state.

    ``only="ours"`` or ``"stock"`` builds that side alone (the peak-RSS children:
    one model in memory, as a user's run has).
    """

    def __init__(self, cfg: BenchConfig, categories, resize, device: torch.device, only: str | None = None):
        from detr_ft.devices import fused_optimizer
        from detr_ft.engine import DetrModule, OptimConfig
        from detr_ft.model.build import ModelBundle
        from detr_ft.model.speed import for_training

        model, pretrained, self.note = bench_model(cfg.model, categories.id2label, cfg.seed)
        self.pretrained = pretrained
        # detr-ft's optimizer kernel on its side and the bare network's; the stock side's as users write it
        self.fused = fused_optimizer(device.type, cfg.precision == "bf16", processes=1)
        self.stock = self.bare = self.ours = self.initial = None
        if only in (None, "stock"):
            self.stock = (model if only else copy.deepcopy(model)).to(device)
        if only is None:
            self.bare = copy.deepcopy(model).to(device)
            self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if only in (None, "ours"):
            bundle = ModelBundle(model, resize, model.config.model_type, pretrained)
            self.ours = DetrModule(bundle, categories, OptimConfig(fused=self.fused)).to(device)
        for name, m in self.networks().items():  # as detr-ft train does; the stock side as it is
            if name != "stock":
                for_training(m, device, cfg.channels_last)
        if cfg.compile:  # the network, as detr-ft train --compile does; the losses stay eager
            for m in self.networks().values():
                m.model.compile(dynamic=False)
        self.device = device
        self.amp = lambda: autocast(device, cfg.precision)

    def networks(self) -> dict[str, nn.Module]:
        """The transformers model of each side built."""
        found = {"ours": self.ours.model if self.ours is not None else None, "stock": self.stock, "bare": self.bare}
        return {name: m for name, m in found.items() if m is not None}

    def reset(self) -> dict[str, torch.optim.Optimizer]:
        """Every model back to the initial weights (a lone side is still at them); fresh optimizers
        (detr-ft's own for ours)."""
        networks = self.networks()
        if self.initial is not None:
            with torch.no_grad():
                for m in networks.values():
                    for k, v in m.state_dict().items():
                        v.copy_(self.initial[k])
        return {name: self.ours.configure_optimizers() if name == "ours" else adamw(m, self.fused and name == "bare")
                for name, m in networks.items()}

    def our_step(self, optimizer, batch) -> None:
        with self.amp():
            loss = self.ours.compute_loss(batch)["loss"]
        if not torch.isfinite(loss):  # the check detr-ft's training_step makes (one host sync)
            raise RuntimeError("bench: detr-ft's training loss is not finite")
        loss.backward()
        clip_and_step(self.ours.model, optimizer)

    def stock_step(self, optimizer, pixel_values, pixel_mask, labels: list[dict]) -> None:
        with self.amp():
            loss = self.stock(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels).loss
        loss.backward()
        clip_and_step(self.stock, optimizer)

    def bare_step(self, optimizer, pixel_values, pixel_mask) -> None:
        from detr_ft.model.outputs import detection_outputs

        with self.amp():
            loss = trivial_loss(detection_outputs(self.bare, pixel_values, pixel_mask, with_aux=True))
        loss.backward()
        clip_and_step(self.bare, optimizer)
