"""SR evaluation conventions: Y (BT.601), PSNR/SSIM known values, MATLAB bicubic against the benchmark's own
LR files and the published bicubic row, and the awkward inputs (gray, 16-bit, tiny, odd sizes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

import edgevit
from edgevit import io, processing
from edgevit.cli import main
from edgevit.errors import EdgevitError
from edgevit.sr.data import read_sr_image
from edgevit.sr.evaluate import evaluate_sr, load_pairs, psnr, sr_metrics, ssim


def test_rgb_to_y_known_values():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(processing.rgb_to_y(rgb)[0], [16.0, 235.0, 81.481, 40.966])
    np.testing.assert_allclose(processing.rgb_to_y(rgb.astype(np.float64) / 255), processing.rgb_to_y(rgb))


def test_psnr_known_values():
    a = np.random.default_rng(0).integers(0, 250, (20, 30)).astype(np.float64)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 5) == pytest.approx(10 * math.log10(255**2 / 25))
    b = a.copy()
    b[0, :4] += 30  # MSE = 4 * 900 / 600 = 6
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 6))


def test_ssim_known_values_and_reference():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 50)).astype(np.float64)
    assert ssim(a, a) == pytest.approx(1.0)
    flat_a, flat_b = np.full((20, 20), 100.0), np.full((20, 20), 110.0)
    c1 = (0.01 * 255) ** 2  # flat images: only the luminance term is left
    assert ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))
    from skimage.metrics import structural_similarity

    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    ref = structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(ref, abs=2e-3)  # skimage averages a slightly different crop
    assert ssim(a, b) < 0.99


def test_matlab_resize_basics():
    const = np.full((9, 13, 3), 77, np.uint8)
    assert (processing.resize_matlab(const, (4, 6)) == 77).all()
    assert (processing.resize_matlab(const, (27, 39)) == 77).all()
    m = processing.matlab_resize_matrix(12, 6)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert (np.count_nonzero(m, axis=1) > 4).all()  # antialiased: wider than 4 taps when shrinking
    ramp = np.tile(np.arange(0, 64, dtype=np.float64), (8, 1))
    np.testing.assert_allclose(processing.resize_matlab(ramp, (8, 32))[:, 4:-4], ramp[:, 8:-8:2] + 0.5, atol=1e-6)


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
@pytest.mark.parametrize("scale", [2, 4])
def test_matlab_downscale_matches_dataset_lr_files(shared_data, dataset, scale):
    root = shared_data / "sr" / dataset
    for hr_path in sorted((root / "HR").glob("*.png"))[:5]:
        hr = read_sr_image(hr_path)
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        lr = read_sr_image(root / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png")
        mine = processing.resize_matlab(hr, (hr.shape[0] // scale, hr.shape[1] // scale))
        np.testing.assert_array_equal(mine, lr, err_msg=str(hr_path))


@pytest.mark.parametrize("scale,published", [(2, (33.66, 0.9299)), (4, (28.42, 0.8104))])
def test_bicubic_row_reproduces_published_set5(shared_data, scale, published):
    """The standard "Bicubic" row of SR papers (Set5): the whole protocol agrees to within 0.02 dB."""
    r = evaluate_sr("bicubic", shared_data / "sr" / "Set5", scale, progress=False)
    assert abs(r.psnr - published[0]) < 0.02 and abs(r.ssim - published[1]) < 0.001
    assert {i["lr"] for i in r.images} == {"file"}


def _write(path, array):
    Image.fromarray(array).save(path)


@pytest.fixture
def awkward(tmp_path):
    """HR folder: an RGB photo with odd size, a gray one, a 16-bit gray one; no LR files."""
    rng = np.random.default_rng(0)
    base = processing.resize_bicubic(rng.integers(0, 256, (12, 10, 3)).astype(np.uint8), (61, 47))
    _write(tmp_path / "odd.png", base)
    _write(tmp_path / "gray.png", base[:40, :40, 1])
    Image.fromarray(base[:44, :36, 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    return tmp_path


def test_awkward_images_are_handled(awkward):
    pairs = {p[0]: p for p in load_pairs(awkward, 4)}
    assert pairs["odd"][1].shape == (60, 44, 3) and pairs["odd"][2].shape == (15, 11, 3)  # mod-cropped
    assert pairs["gray"][4] and pairs["deep"][4] and not pairs["odd"][4]
    assert pairs["deep"][3] == "bicubic"
    model = edgevit.create_model("efficientvit-sr-s-x4")  # 15x11 input: far smaller than a 256 tile
    r = evaluate_sr(model, awkward, 4, progress=False)
    assert [i["image"] for i in r.images] == ["deep", "gray", "odd"]
    assert all(np.isfinite(i["psnr"]) and 0 < i["ssim"] <= 1 for i in r.images)
    # gray references are scored on the gray value itself: full-range luma
    hr = pairs["gray"][1]
    noisy = np.clip(hr.astype(int) + 3, 0, 255).astype(np.uint8)
    assert sr_metrics(noisy, hr, 4, gray=True)[0] < sr_metrics(noisy, hr, 4, gray=False)[0]


def test_awkward_images_clear_errors(tmp_path):
    deep_rgb = np.zeros((20, 20, 3), np.uint16)
    import zlib, struct  # a minimal 16-bit RGB PNG (Pillow cannot write one)

    raw = b"".join(b"\x00" + deep_rgb[i].astype(">u2").tobytes() for i in range(20))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20, 20, 16, 2, 0, 0, 0))
    (tmp_path / "rgb16.png").write_bytes(png + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(EdgevitError, match="16-bit colour PNG"):
        read_sr_image(tmp_path / "rgb16.png")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    _write(tiny / "t.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(EdgevitError, match="SSIM needs at least 11x11"):
        evaluate_sr("bicubic", tiny, 4, progress=False)
    _write(tiny / "t.png", np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(EdgevitError, match="smaller than the scale"):
        evaluate_sr("bicubic", tiny, 4, progress=False)
    with pytest.raises(EdgevitError, match="upscales x2"):
        evaluate_sr(edgevit.create_model("fsrcnn-x2"), tiny, 4, progress=False)


def test_callable_without_contract_and_cli(awkward, tmp_path, capsys):
    fn = lambda x: np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)  # nearest neighbour, any size
    r = edgevit.evaluate_sr(fn, awkward, 2, name="nearest", progress=False)
    bic = edgevit.evaluate_sr("bicubic", awkward, 2, progress=False)
    assert r.name == "nearest" and r.psnr < bic.psnr
    assert main(["eval-sr", "fsrcnn-x2", "--data", str(awkward), "--scale", "2", "--out", str(tmp_path / "o")]) == 0
    out = json.loads((tmp_path / "o" / "eval_sr.json").read_text())
    assert [x["name"] for x in out["results"]] == ["bicubic (MATLAB imresize)", "fsrcnn-x2"]
    assert "| mean |" in capsys.readouterr().out
    assert main(["eval-sr", "efficientvit-seg-b0-voc", "--data", str(awkward), "--scale", "2"]) == 2
    assert "not super-resolution" in capsys.readouterr().err
