"""Tiled SR inference: tiles partition the image, every call gets one fixed-size tile, and the stitched
output equals the untiled model (odd sizes, many tiles, images smaller than a tile)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import edgevit
from edgevit.errors import EdgevitError
from edgevit.sr.tiling import as_sr_fn, tile_spans, upscale_tiled


@pytest.mark.parametrize("n,tile,margin,mult", [(100, 32, 8, 1), (37, 40, 8, 1), (256, 112, 48, 16), (113, 33, 9, 1)])
def test_tile_spans_partition_and_keep_margin(n, tile, margin, mult):
    spans = tile_spans(n, tile, margin, mult)
    assert spans[0][1] == 0 and spans[-1][2] == n
    for (o, a, b), nxt in zip(spans, spans[1:] + [None]):
        assert a < b and (nxt is None or nxt[1] == b)  # contiguous partition of [0, n)
        assert o % mult == 0 and (n <= tile or o + tile <= n)
        assert a == 0 or a - o >= margin
        assert b == n or o + tile - b >= margin


def _counting(model):
    seen = []
    run = as_sr_fn(model)

    def fn(x):
        seen.append(x.shape)
        return run(x)

    return fn, seen


@pytest.mark.parametrize("model_id,tile,hw", [
    ("efficientvit-sr-s-x2", 144, (150, 170)),  # 2x2 tiles, sizes not multiples of the window
    ("efficientvit-sr-s-x2", (144, 176), (150, 200)),  # rectangular tiles (a camera frame's aspect)
    ("efficientvit-sr-s-x4", 144, (150, 97)),
    ("fsrcnn-x2", 32, (45, 70)),
    ("fsrcnn-x2", (24, 40), (45, 70)),
    ("fsrcnn-x4", 24, (31, 26)),
])
def test_tiled_equals_untiled(model_id, tile, hw):
    torch.manual_seed(0)
    model = edgevit.create_model(model_id)
    contract = replace(model.contract, tile=tile)
    x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
    fn, seen = _counting(model)
    tiled = upscale_tiled(fn, x, contract)
    assert len(seen) > 1 and set(seen) == {(1, 3, *contract.tile_hw)}  # one fixed-size tile per call
    with torch.inference_mode():
        full = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(tiled, full, atol=2e-5, rtol=0)


def test_tiling_is_not_trivially_exact():
    """Without overlap the seams show: the margin is what makes tiling exact."""
    torch.manual_seed(0)
    model = edgevit.create_model("efficientvit-sr-s-x2")
    with torch.no_grad():
        model.upsampler.weight.mul_(10)  # undo the near-bicubic initialisation
    x = np.random.default_rng(1).random((1, 3, 96, 96), dtype=np.float32)
    short = replace(model.contract, tile=64, margin=0)
    with torch.inference_mode():
        full = model(torch.from_numpy(x)).numpy()
    assert np.abs(upscale_tiled(model, x, short) - full).max() > 1e-4


def test_image_smaller_than_a_tile_is_padded():
    torch.manual_seed(0)
    model = edgevit.create_model("fsrcnn-x2")
    c = replace(model.contract, tile=32)
    x = np.random.default_rng(2).random((1, 3, 25, 20), dtype=np.float32)
    fn, seen = _counting(model)
    y = upscale_tiled(fn, x, c)
    assert y.shape == (1, 3, 50, 40) and seen == [(1, 3, 32, 32)]
    padded = np.pad(x, ((0, 0), (0, 0), (0, 7), (0, 12)), mode="edge")
    with torch.inference_mode():
        ref = model(torch.from_numpy(padded)).numpy()[:, :, :50, :40]
    np.testing.assert_allclose(y, ref, atol=1e-6, rtol=0)
    with torch.inference_mode():  # away from the padded edge it is the untiled model
        full = model(torch.from_numpy(x)).numpy()
    m = 2 * c.margin
    np.testing.assert_allclose(y[:, :, : 50 - m, : 40 - m], full[:, :, : 50 - m, : 40 - m], atol=2e-5)
    assert np.abs(y - full).max() > 1e-6  # the padded edge itself does differ


def test_bad_inputs_are_one_line_errors():
    model = edgevit.create_model("fsrcnn-x2")
    with pytest.raises(EdgevitError, match="float32 N×3×H×W"):
        upscale_tiled(model, np.zeros((3, 8, 8), np.float32), model.contract)
    with pytest.raises(EdgevitError, match="expected"):
        upscale_tiled(lambda x: x, np.zeros((1, 3, 8, 8), np.float32), model.contract)


def test_working_memory_does_not_grow_with_the_image():
    """numpy allocations (traced) beyond the output stay within a few tiles' worth, whatever the image size: the
    image is never padded or copied whole, and one output tile is freed before the next is made."""
    import tracemalloc

    from edgevit.models.sr_common import SRContract

    contract = SRContract(scale=2, tile=(48, 64), margin=8, size_multiple=8)

    def nearest(t: np.ndarray) -> np.ndarray:  # an SR callable with the contract: nearest-neighbour x2
        return t.repeat(2, axis=2).repeat(2, axis=3)

    th, tw = contract.tile_hw
    tile_bytes = 4 * 3 * th * tw * (1 + 4)  # one input tile + its x2 output
    extra = []
    for h, w in [(100, 130), (301, 405)]:  # several tiles, neither size a multiple of 8
        x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
        tracemalloc.start()
        y = upscale_tiled(nearest, x, contract)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(y, nearest(x))
        extra.append(peak - y.nbytes)
    # 7x the pixels, same working memory (before: +1.3 MB, a padded copy of the image and two output tiles alive)
    assert abs(extra[1] - extra[0]) <= 0.1 * tile_bytes and max(extra) <= 2 * tile_bytes, extra
