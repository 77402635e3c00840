"""The resize rule: transformers' image processor's output size, never above ``longest``."""

from __future__ import annotations

import numpy as np
import pytest

from detr_ft.types import ResizeSpec

RULES = [(800, 1333), (128, 192), (96, 160), (512, 853)]


def aspect_sweep() -> list[tuple[int, int]]:
    """(height, width) pairs from 1:20 to 20:1, at a few scales, plus the odd shapes of issue 20."""
    shapes = {(170, 96), (96, 170), (200, 1000), (20, 330), (10, 200), (1, 1), (1, 7)}
    for ratio in np.geomspace(1 / 20, 20, 81):
        for base in (17, 96, 333, 1000):
            shapes.add((max(1, int(round(base * ratio))), base))
    return sorted(shapes)


def processor_size(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    """The size transformers' DETR image processor resizes to (its own size function)."""
    from transformers.image_transforms import get_size_with_aspect_ratio

    return tuple(get_size_with_aspect_ratio((height, width), shortest, longest))


@pytest.mark.compat
@pytest.mark.parametrize("shortest,longest", RULES)
def test_output_size_is_transformers_and_never_above_longest(shortest, longest):
    spec = ResizeSpec(shortest, longest)
    capped = 0
    for h, w in aspect_sweep():
        ours, theirs = spec.output_size(h, w), processor_size(h, w, shortest, longest)
        assert max(ours) <= longest, (h, w, ours)
        if max(theirs) <= longest:
            assert ours == theirs, (h, w, ours, theirs)
        else:  # transformers keeps a strip whose short side already is the target: long side capped here
            capped += 1
            assert min(ours) == min(theirs) and max(ours) == longest, (h, w, ours, theirs)
    assert capped <= 3  # rare: only strips whose rounded target equals their short side


@pytest.mark.compat
@pytest.mark.parametrize("shape,rule", [((170, 96), (96, 160)), ((96, 170), (96, 160)), ((200, 1000), (800, 1333)),
                                        ((20, 330), (128, 192)), ((333, 20), (128, 192))])
def test_output_size_is_what_the_processor_produces(shape, rule):
    """The processor run on an image of that shape (not just its size function)."""
    import warnings

    from transformers import DetrImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = DetrImageProcessor(size={"shortest_edge": rule[0], "longest_edge": rule[1]}, do_pad=False)
        pixels = processor(images=np.zeros((*shape, 3), np.uint8), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == ResizeSpec(*rule).output_size(*shape)


def test_the_issue_strips_stay_within_longest():
    assert ResizeSpec(800, 1333).output_size(200, 1000) == (267, 1333)
    assert ResizeSpec(128, 192).output_size(20, 330) == (12, 192)
    assert ResizeSpec(96, 160).output_size(170, 96) == processor_size(170, 96, 96, 160) == (160, 90)


def test_image_size_on_a_fixed_size_rule_keeps_it_fixed():
    """RT-DETR-line processors resize to a fixed height x width: --image-size changes that size."""
    from detr_ft.types import ResizeSpec

    spec = ResizeSpec.fixed_size(640, 640)
    assert spec.with_image_size([320]).output_size(100, 300) == (320, 320)
    assert ResizeSpec.fixed_size(480, 640).with_image_size([240, 320]).output_size(50, 70) == (240, 320)
    assert ResizeSpec.fixed_size(640, 480).with_image_size([240, 320]).output_size(50, 70) == (320, 240)
