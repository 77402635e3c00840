"""What ``--device hpu`` wires up, with stand-ins for lightning-habana and the Habana stack
(no Gaudi here): the accelerator, strategy and precision plugin Lightning gets, and HPU graphs
for inference in lazy mode only."""

import sys
import types

import pytest
import torch

from detr_ft.devices import accelerate_inference, inference_device, trainer_device


class Recorded:
    """A stand-in class that keeps the arguments it was made with."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def habana(monkeypatch):
    """Fake ``lightning_habana`` and ``habana_frameworks.torch`` modules; returns the HPU-graph
    wraps seen."""
    classes = {name: type(name, (Recorded,), {}) for name in
               ("HPUAccelerator", "HPUPrecisionPlugin", "HPUDDPStrategy", "SingleHPUStrategy")}
    modules = {
        "lightning_habana": {},
        "lightning_habana.pytorch": {},
        "lightning_habana.pytorch.accelerator": {"HPUAccelerator": classes["HPUAccelerator"]},
        "lightning_habana.pytorch.plugins": {"HPUPrecisionPlugin": classes["HPUPrecisionPlugin"]},
        "lightning_habana.pytorch.strategies": {k: classes[k] for k in ("HPUDDPStrategy", "SingleHPUStrategy")},
        "habana_frameworks": {},
        "habana_frameworks.torch": {},
        "habana_frameworks.torch.core": {},
        "habana_frameworks.torch.hpu": {},
    }
    for name, attrs in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(__name__=name, **attrs))
    wrapped = []

    def wrap_in_hpu_graph(model):
        wrapped.append(model)
        return model

    sys.modules["habana_frameworks.torch.hpu"].wrap_in_hpu_graph = wrap_in_hpu_graph
    sys.modules["habana_frameworks.torch"].hpu = sys.modules["habana_frameworks.torch.hpu"]
    sys.modules["habana_frameworks"].torch = sys.modules["habana_frameworks.torch"]
    return types.SimpleNamespace(classes=classes, wrapped=wrapped)


def test_hpu_training_wires_the_habana_stand_ins_accelerator_strategies_and_precision(habana):
    one = trainer_device("hpu", devices=1, num_nodes=1, strategy="auto", autocast=True)
    assert type(one.accelerator).__name__ == "HPUAccelerator"
    assert type(one.strategy).__name__ == "SingleHPUStrategy"
    assert [type(p).__name__ for p in one.plugins] == ["HPUPrecisionPlugin"]
    assert one.plugins[0].kwargs == {"precision": "bf16-mixed"}
    assert one.precision is None  # the plugin carries it: Lightning refuses both

    many = trainer_device("hpu", devices=8, num_nodes=2, strategy="auto", autocast=False)
    assert type(many.strategy).__name__ == "HPUDDPStrategy"
    assert many.plugins[0].kwargs == {"precision": "32-true"}
    assert trainer_device("hpu", devices=2, num_nodes=1, strategy="ddp", autocast=False).strategy == "ddp"


@pytest.mark.parametrize("lazy, graphs", [(None, True), ("1", True), ("0", False)])
def test_hpu_inference_runs_hpu_graphs_in_lazy_mode_only(habana, monkeypatch, lazy, graphs):
    if lazy is None:
        monkeypatch.delenv("PT_HPU_LAZY_MODE", raising=False)  # the Habana stack's default: lazy
    else:
        monkeypatch.setenv("PT_HPU_LAZY_MODE", lazy)
    device = inference_device("hpu")
    assert device == torch.device("hpu")
    model = torch.nn.Linear(2, 2)
    assert accelerate_inference(model, device) is model
    assert habana.wrapped == ([model] if graphs else [])


def test_other_devices_are_lightnings_own():
    cpu = trainer_device("cpu", devices=1, num_nodes=1, strategy="auto", autocast=True)
    assert (cpu.accelerator, cpu.strategy, cpu.plugins, cpu.precision) == ("cpu", "auto", [], "bf16-mixed")
    model = torch.nn.Linear(2, 2)
    assert accelerate_inference(model, torch.device("cpu")) is model


def test_several_processes_run_ddp_with_find_unused_parameters():
    """Over several processes DDP lets a parameter sit out a step's loss (Conditional DETR's unread ResNet
    stages, RF-DETR's mask token, the RT-DETR line's denoising embedding on a batch without objects: see
    test_ddp's family runs); one process, and strategies other than DDP, stay as given."""
    def strategy(name, devices=2, num_nodes=1):
        return trainer_device("cpu", devices=devices, num_nodes=num_nodes, strategy=name, autocast=False).strategy

    assert strategy("ddp") == strategy("auto") == "ddp_find_unused_parameters_true"
    assert strategy("ddp", devices=1, num_nodes=2) == "ddp_find_unused_parameters_true"
    assert strategy("ddp_spawn") == "ddp_spawn_find_unused_parameters_true"
    assert strategy("ddp_find_unused_parameters_false") == "ddp_find_unused_parameters_false"  # said outright
    assert strategy("fsdp") == "fsdp" and strategy("auto", devices=1) == strategy("auto", devices=-1) == "auto"
    assert strategy("ddp", devices=1) == "ddp"
