"""--model: presets, local directories, the hub error, and backbone freezing as in DETR."""

import pytest
import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from detr_ft.errors import UserError
from detr_ft.model.build import backbone_module, build_model
from detr_ft.model.outputs import detection_outputs

pytestmark = pytest.mark.compat

LABELS = {0: "mask", 1: "gloves", 2: "goggles"}


def small_detr_dir(tmp_path, num_labels=7):
    """A DETR with a (small) ResNet bottleneck backbone, saved like a hub checkpoint."""
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 2, 1, 1],
                            layer_type="bottleneck", out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5,
                        num_labels=num_labels)
    DetrForObjectDetection(config).save_pretrained(tmp_path)
    return tmp_path


def test_pretrained_backbone_freezes_stem_and_first_stage_only(tmp_path):
    bundle = build_model(str(small_detr_dir(tmp_path)), LABELS)
    assert bundle.pretrained
    named = dict(backbone_module(bundle.model).named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    frozen = set(named) - trainable
    assert trainable, "stages 2-4 of the ResNet must train (transformers' own setting freezes them all)"
    assert all("embedder" in n or "stages.0." in n for n in frozen)
    assert all(any(f"stages.{k}." in n for k in (1, 2, 3)) for n in trainable)
    n_trainable = sum(named[n].numel() for n in trainable)
    n_later_stages = sum(p.numel() for n, p in named.items() if any(f"stages.{k}." in n for k in (1, 2, 3)))
    assert n_trainable == n_later_stages > 0


def test_local_directory_gets_a_head_for_the_dataset(tmp_path):
    bundle = build_model(str(small_detr_dir(tmp_path, num_labels=7)), LABELS)
    assert bundle.model.config.num_labels == 3
    assert bundle.model.config.id2label == LABELS
    assert bundle.model.class_labels_classifier.out_features == 4  # 3 classes + no object
    assert bundle.resize.longest == 1333  # no preprocessor config: DETR's own resize


def test_preset_is_fully_trainable_with_trainable_batch_norm():
    bundle = build_model("detr-tiny", LABELS)
    assert not bundle.pretrained
    params = list(backbone_module(bundle.model).parameters())
    assert params and all(p.requires_grad for p in params)
    names = {type(m).__name__ for m in bundle.model.modules()}
    assert "BatchNorm2d" in names and not any(n.endswith("FrozenBatchNorm2d") for n in names)
    out = detection_outputs(bundle.model, torch.randn(2, 3, 64, 96), torch.ones(2, 64, 96, dtype=torch.long))
    assert out.logits.shape == (2, bundle.model.config.num_queries, 4)
    assert len(out.aux) == bundle.model.config.decoder_layers - 1


def test_unreachable_hub_id_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        build_model("facebook/detr-resnet-50", LABELS)
    assert "--model detr-tiny" in str(e.value) and "local" in str(e.value)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        build_model(str(tmp_path), LABELS)
