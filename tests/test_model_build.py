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


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _online(monkeypatch, endpoint: str):
    """huggingface_hub as a user's machine has it: online mode, no proxy, this endpoint."""
    from huggingface_hub import constants

    from detr_ft.hub import PROXY_VARIABLES

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    for k in PROXY_VARIABLES:
        monkeypatch.delenv(k, raising=False)


def test_hub_probe_tells_a_listening_endpoint_from_an_absent_one(monkeypatch):
    import socket

    from huggingface_hub import constants

    from detr_ft.hub import hub_unreachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _online(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None
    port = _closed_port()
    _online(monkeypatch, f"http://127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in hub_unreachable()
    _online(monkeypatch, "https://no-such-host.invalid")
    assert "no-such-host.invalid:443" in hub_unreachable()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # reached through it: cannot tell
    assert hub_unreachable() is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the network is not asked anyway
    assert hub_unreachable() is None


def test_unreachable_hub_names_why_without_waiting_for_retries(monkeypatch):
    """Online mode but no hub: the cache alone is asked (no request, so no back-off), and the
    error says what was unreachable."""
    import transformers

    port = _closed_port()
    _online(monkeypatch, f"http://127.0.0.1:{port}")
    asked = []
    real = transformers.AutoModelForObjectDetection.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForObjectDetection, "from_pretrained",
                        lambda *a, **kw: asked.append(kw) or real(*a, **kw))
    with pytest.raises(UserError) as e:
        build_model("facebook/detr-resnet-50", LABELS)
    assert [kw.get("local_files_only") for kw in asked] == [True]
    message = str(e.value)
    assert f"unreachable (127.0.0.1:{port}" in message and "--model detr-tiny" in message and "\n" not in message


def test_unreachable_hub_still_loads_a_cached_model(tmp_path):
    """A model downloaded once loads from the Hugging Face cache when the hub cannot be reached
    (a fresh process: transformers 4.57 reads the cache location at import)."""
    import os
    import subprocess
    import sys

    snapshot = tmp_path / "cache" / "models--facebook--detr-resnet-50" / "snapshots" / ("ab" * 20)
    small_detr_dir(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "no_timm").write_text("ab" * 20)  # the revision detr-ft asks for
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env.update(HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "cache"),
               HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    code = ("from detr_ft.model.build import build_model; "
            f"b = build_model('facebook/detr-resnet-50', {LABELS!r}); print(b.pretrained, b.model.config.num_labels)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "3"]
