"""Several named inputs and outputs through every backend (pte, tflite, onnx): export, load, ``run``.

A toy prompt-decoder-like module (float image 1×8×16×16 + float points 1×4×2 → maps 1×4×16×16 and scores
1×4: convolutions, linear layers, activation × activation matmuls and a softmax) exported at fp32 and int8,
fed with deterministic real-ish inputs derived from scikit-image's bundled photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevit.errors import EdgevitError
from edgevit.lowering.base import ExportRequest, IOSpec, get_backend
from edgevit.manifest import Manifest, sha256_file, write_manifest
from edgevit.runtime import TorchRunner, load_artifact

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (its bundled photos) is not installed")

BACKENDS = ("pte", "tflite", "onnx")
_TOOLCHAIN = {"pte": "executorch.exir", "tflite": "litert_torch", "onnx": "onnxruntime"}
INPUTS = (IOSpec("image", (1, 8, 16, 16)), IOSpec("points", (1, 4, 2)))
OUTPUTS = ("maps", "scores")
PHOTOS = ("astronaut", "chelsea", "rocket", "camera", "hubble_deep_field", "retina", "coffee", "immunohistochemistry")
N_CALIB = 6  # the first six photos calibrate int8; the last two are held out
FP32_REL_TOL = 1e-4  # max |artifact - eager| / max |eager|, per output
INT8_MIN_COSINE = 0.99  # per output, on each held-out sample


class TwoInTwoOut(nn.Module):
    """image 1×8×16×16, points 1×4×2 (in [-1, 1]) → maps 1×4×16×16 (point-feature similarity), scores 1×4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 1)
        self.embed = nn.Linear(2, 16)
        self.query = nn.Linear(16, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.conv2(F.relu(self.conv1(image)))  # 1×16×16×16
        tokens = feats.flatten(2).transpose(1, 2)  # 1×256×16
        q = self.query(torch.tanh(self.embed(points)))  # 1×4×16
        sim = q @ tokens.transpose(1, 2)  # 1×4×256
        context = torch.softmax(sim, dim=-1) @ tokens  # 1×4×16
        return sim.reshape(1, 4, 16, 16), self.head(context + q).squeeze(-1)


def _photo(name: str) -> np.ndarray:
    im = getattr(skimage_data, name)()
    im = np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3]
    return im.astype(np.float32) / 255.0


def _sample(name: str) -> tuple[np.ndarray, np.ndarray]:
    """8 channels of 16×16 from a photo (its RGB and a centre crop's RGB, grey, gradient magnitude), and
    the points (x, y in [-1, 1]) of the 4 brightest cells of a 4×4 grid of the grey image."""
    im = _photo(name)
    h, w = (im.shape[0] // 16) * 16, (im.shape[1] // 16) * 16

    def pool(a: np.ndarray, size: int = 16) -> np.ndarray:
        hh, ww = (a.shape[0] // size) * size, (a.shape[1] // size) * size
        return a[:hh, :ww].reshape(size, hh // size, size, ww // size, -1).mean((1, 3))

    full = pool(im[:h, :w])
    crop = pool(im[h // 4: 3 * h // 4, w // 4: 3 * w // 4])
    grey = full.mean(-1, keepdims=True)
    gy, gx = np.gradient(grey[..., 0])
    image = np.concatenate([full, crop, grey, np.hypot(gx, gy)[..., None] * 4], axis=-1)
    image = ((image - 0.45) / 0.25).transpose(2, 0, 1)[None]
    cells = pool(grey, 4)[..., 0].ravel()
    top = np.argsort(-cells, kind="stable")[:4]
    points = np.stack([(top % 4 + 0.5) / 2 - 1, (top // 4 + 0.5) / 2 - 1], axis=-1)[None]
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(points, np.float32)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    return [_sample(name) for name in PHOTOS]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return TwoInTwoOut().eval()


def _eager(model: nn.Module, sample: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    return TorchRunner(model, [s.name for s in INPUTS], OUTPUTS).run(dict(zip([s.name for s in INPUTS], sample)))


def _export(folder: Path, model: nn.Module, fmt: str, precision: str, inputs=INPUTS, outputs=OUTPUTS,
            calibration=None) -> Path:
    """Export through the backend and write a manifest listing every input and output."""
    pytest.importorskip(_TOOLCHAIN[fmt], reason=f"the {fmt} toolchain is not installed")
    backend = get_backend(fmt)
    art = folder / f"model{backend.extension}"
    result = backend.export(ExportRequest.multi(model, inputs, outputs, precision, art, calibration=calibration))
    example = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in inputs)
    with torch.no_grad():
        ys = model(*example)
    ys = ys if isinstance(ys, tuple) else (ys,)
    manifest = Manifest(
        model_id="toy", format=fmt, precision=precision, artifact=art.name, sha256=sha256_file(art),
        size_bytes=art.stat().st_size, contract={"task": "test"}, tool_versions=result.tool_versions,
        inputs=[s.to_dict() for s in inputs],
        outputs=[{"name": n, "shape": list(y.shape), "dtype": str(y.dtype).removeprefix("torch.")}
                 for n, y in zip(outputs, ys)],
        quantization=result.quantization, delegation=result.delegation)
    return write_manifest(manifest, folder).parent


class _Exports(dict):
    """fp32 artifact folders per format, exported on first use (so ``-k onnx`` exports only ONNX)."""

    def __init__(self, model: nn.Module, tmp: Path):
        super().__init__()
        self.model, self.tmp = model, tmp

    def __missing__(self, fmt: str) -> Path:
        self[fmt] = _export(self.tmp / fmt, self.model, fmt, "fp32")
        return self[fmt]


@pytest.fixture(scope="module")
def fp32(model, tmp_path_factory) -> dict[str, Path]:
    return _Exports(model, tmp_path_factory.mktemp("multiio-fp32"))


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("fmt", BACKENDS)
def test_fp32_matches_eager(fmt, fp32, model, samples):
    runner = load_artifact(fp32[fmt], threads=1)
    assert runner.input_names == ("image", "points") and runner.output_names == OUTPUTS
    for sample in samples[-2:]:
        ref = _eager(model, sample)
        got = runner.run({"points": sample[1], "image": sample[0]})  # any key order
        assert list(got) == list(OUTPUTS) and runner.last_seconds > 0
        for name in OUTPUTS:
            assert got[name].dtype == np.float32 and got[name].shape == ref[name].shape
            assert _rel_err(got[name], ref[name]) <= FP32_REL_TOL, (fmt, name)


@pytest.mark.parametrize("fmt", BACKENDS)
def test_int8_stays_close_to_eager(fmt, model, samples, tmp_path):
    folder = _export(tmp_path, model, fmt, "int8", calibration=samples[:N_CALIB])
    runner = load_artifact(folder, threads=1)
    for sample in samples[N_CALIB:]:
        ref, got = _eager(model, sample), runner.run(dict(zip(("image", "points"), sample)))
        for name in OUTPUTS:
            assert got[name].dtype == np.float32
            assert _cosine(got[name], ref[name]) > INT8_MIN_COSINE, (fmt, name, _cosine(got[name], ref[name]))
    # int8 is not the float graph: the artifact differs from eager (the test would pass on a float export)
    assert any(_rel_err(got[n], ref[n]) > FP32_REL_TOL for n in OUTPUTS)


@pytest.mark.parametrize("fmt", BACKENDS)
def test_run_rejects_wrong_inputs(fmt, fp32, samples):
    runner = load_artifact(fp32[fmt], threads=1)
    image, points = samples[0]
    cases = {
        "did you mean 'points'": {"image": image, "point": points},
        "missing input\\(s\\) 'points'": {"image": image},
        r"input 'points' must be float32 \(1, 4, 2\)": {"image": image, "points": points[:, :3]},
        r"input 'image' must be float32 \(1, 8, 16, 16\).*float64": {"image": image.astype(np.float64),
                                                                     "points": points},
        "takes a dict": [image, points],
    }
    for needle, bad in cases.items():
        with pytest.raises(EdgevitError, match=needle) as err:
            runner.run(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(EdgevitError, match=r"runner\(x\) is for one input and one output.*runner\.run"):
        runner(image)


@pytest.mark.parametrize("fmt", ("tflite", "onnx"))
def test_runner_checks_manifest_against_graph(fmt, fp32):
    from edgevit.manifest import read_manifest

    manifest, art = read_manifest(fp32[fmt])
    swapped = Manifest(**{**manifest.to_json(), "inputs": manifest.inputs[::-1]})
    with pytest.raises(EdgevitError, match="re-export"):
        get_backend(fmt).load(art, swapped)
    one_output = Manifest(**{**manifest.to_json(), "outputs": manifest.outputs[:1]})
    with pytest.raises(EdgevitError, match="outputs"):
        get_backend(fmt).load(art, one_output).run(dict(zip(("image", "points"), (
            np.zeros((1, 8, 16, 16), np.float32), np.zeros((1, 4, 2), np.float32)))))


class LabelledPoints(nn.Module):
    """image 1×8×16×16, labels int 1×4 (0/1, as SAM's point labels) → 1×4 scores: an integer input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.conv(image).mean((2, 3)) * (labels.to(torch.float32) * 2 - 1)


# int64 where the backend takes it; LiteRT's converter turns int64 inputs into int32, so it takes int32 only.
INT_DTYPE = {"pte": "int64", "tflite": "int32", "onnx": "int64"}


@pytest.mark.parametrize("fmt", BACKENDS)
def test_integer_input(fmt, samples, tmp_path):
    torch.manual_seed(0)
    model = LabelledPoints().eval()
    dtype = INT_DTYPE[fmt]
    inputs = (INPUTS[0], IOSpec("labels", (1, 4), dtype))
    folder = _export(tmp_path, model, fmt, "fp32", inputs=inputs, outputs=("scores",))
    labels = np.array([[1, 0, 1, 1]], dtype)
    with torch.inference_mode():
        ref = model(torch.from_numpy(samples[0][0]), torch.from_numpy(labels)).numpy()
    runner = load_artifact(folder, threads=1)
    got = runner.run({"image": samples[0][0], "labels": labels})["scores"]
    assert _rel_err(got, ref) <= FP32_REL_TOL
    other = np.int32 if dtype == "int64" else np.int64
    with pytest.raises(EdgevitError, match=rf"input 'labels' must be {dtype}"):
        runner.run({"image": samples[0][0], "labels": labels.astype(other)})
    if fmt == "tflite":
        with pytest.raises(EdgevitError, match="takes float32, int32 inputs"):
            get_backend(fmt).export(ExportRequest.multi(model, (INPUTS[0], IOSpec("labels", (1, 4), "int64")),
                                                        ("scores",), "fp32", tmp_path / "m.tflite"))


@pytest.mark.parametrize("fmt", BACKENDS)
def test_request_must_name_every_output(fmt, model, tmp_path):
    pytest.importorskip(_TOOLCHAIN[fmt], reason=f"the {fmt} toolchain is not installed")
    backend = get_backend(fmt)
    out = tmp_path / f"m{backend.extension}"
    with pytest.raises(EdgevitError, match="output") as err:
        backend.export(ExportRequest.multi(model, INPUTS, ("maps",), "fp32", out))
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_request_and_calibration_validation(model, samples, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(EdgevitError, match="must be unique"):
        ExportRequest.multi(model, INPUTS, ("maps", "image"), "fp32", out)
    with pytest.raises(EdgevitError, match="not both"):
        ExportRequest(model, (1, 8, 16, 16), "fp32", out, inputs=INPUTS, outputs=OUTPUTS)
    with pytest.raises(EdgevitError, match="name the model's outputs"):
        ExportRequest(model, None, "fp32", out, inputs=INPUTS)
    with pytest.raises(EdgevitError, match="dtype 'float16' is not supported"):
        IOSpec("mask", (1, 1, 4, 4), "float16")
    with pytest.raises(EdgevitError, match="must be an identifier"):
        IOSpec("point coords", (1, 4, 2))
    single = ExportRequest(model, (1, 8, 16, 16), "fp32", out)
    assert single.inputs == (IOSpec("image", (1, 8, 16, 16)),) and single.outputs == ("logits",)
    assert single.input_shape == (1, 8, 16, 16)
    pytest.importorskip("onnxruntime", reason="the onnx toolchain is not installed")
    backend = get_backend("onnx")
    image, points = samples[0]
    bad = {r"calibration\[0\]: expected 2 arrays": [(image,)],
           r"calibration\[1\]\[1\] \(points\): expected a float32 \(1, 4, 2\)": [(image, points), (image, image)],
           "needs calibration samples": []}
    for needle, calibration in bad.items():
        with pytest.raises(EdgevitError, match=needle):
            backend.export(ExportRequest.multi(model, INPUTS, OUTPUTS, "int8", out, calibration=calibration))
    assert not out.exists()


def test_torch_runner_names_outputs(model, samples):
    runner = TorchRunner(model, ("image", "points"), OUTPUTS)
    got = runner.run(dict(zip(("image", "points"), samples[0])))
    assert list(got) == list(OUTPUTS) and got["maps"].shape == (1, 4, 16, 16) and got["scores"].shape == (1, 4)
    with pytest.raises(EdgevitError, match="did you mean 'image'"):
        runner.run({"imag": samples[0][0], "points": samples[0][1]})
    with pytest.raises(EdgevitError, match="one input and one output"):
        runner(samples[0][0])
    with pytest.raises(EdgevitError, match="returned 2 outputs, expected 1"):
        TorchRunner(model, ("image", "points"), ("maps",)).run(dict(zip(("image", "points"), samples[0])))


def test_example_inputs_come_from_the_first_calibration_sample():
    """A bare-array calibration list (one image input) and a tuple list give the same example tensors."""
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    for calibration in ([x, x], [(x,), (x,)]):
        req = ExportRequest(nn.Identity(), (1, 3, 8, 8), "fp32", Path("unused.onnx"), calibration)
        (example,) = req.example_inputs()
        assert tuple(example.shape) == (1, 3, 8, 8) and np.array_equal(example.numpy(), x)
