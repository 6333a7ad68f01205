"""Export orchestration: manifest contents, atomic writes, gate, tamper detection, artifact evaluation, bench."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edgevit
from edgevit.errors import EdgevitError
from edgevit.export import GateError, export
from edgevit.fidelity import Gate
from edgevit.harness.bench import bench
from edgevit.manifest import read_manifest, sha256_file
from edgevit.runtime import load_artifact

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (edgevit[onnx])")

MODEL = "efficientvit-seg-b0-voc"


@pytest.fixture(scope="module")
def voc(shared_data):
    return shared_data / "seg" / "voc2012_val14"


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory, voc):
    out = tmp_path_factory.mktemp("export") / "b0-onnx"
    manifest = export(MODEL, "onnx", "fp32", out, calib=voc, calib_layout="voc", input_size="64x96", progress=False)
    return out, manifest


def test_manifest_describes_the_artifact(onnx_fp32):
    out, m = onnx_fp32
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["sha256"] == sha256_file(out / m.artifact) == m.sha256
    assert (m.model_id, m.format, m.precision) == (MODEL, "onnx", "fp32")
    assert m.inputs == [{"name": "image", "shape": [1, 3, 64, 96], "dtype": "float32", "layout": "NCHW"}]
    assert m.outputs[0]["shape"] == [1, 21, 8, 12]
    assert m.contract["resize"] == {"kind": "FixedSize", "height": 64, "width": 96, "interpolation": "bicubic"}
    assert m.contract["labels"]["name"] == "voc" and len(m.contract["labels"]["palette"]) == 21
    assert m.contract["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert {"torch", "onnx", "onnxruntime", "edgevit"} <= set(m.tool_versions)
    assert {"head.input_ops.0.op_list.1", "head.input_ops.1.op_list.1"} <= {s["name"] for s in m.substitutions}
    assert all(s["max_abs_diff"] < 1e-4 for s in m.substitutions)
    f = m.fidelity
    assert f["gate_result"] == "passed" and f["agreement"] > 0.999 and f["images"]["count"] == 14
    assert f["miou_drop"] == pytest.approx(0.0, abs=0.05)
    assert m.calibration is None  # fp32: nothing calibrated
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", m.artifact])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_runner_checks_inputs(onnx_fp32):
    out, _ = onnx_fp32
    runner = load_artifact(out)
    y = runner(np.zeros((1, 3, 64, 96), np.float32))
    assert y.shape == (1, 21, 8, 12) and runner.last_seconds > 0
    for bad in (np.zeros((1, 3, 64, 64), np.float32), np.zeros((1, 3, 64, 96), np.float64), [[0.0]]):
        with pytest.raises(EdgevitError, match="input must be float32"):
            runner(bad)


def test_tampered_truncated_and_mismatched_artifacts(onnx_fp32, tmp_path):
    src, m = onnx_fp32
    cases = {}
    for name in ("tampered", "truncated", "manifest_sha", "missing", "badjson"):
        shutil.copytree(src, tmp_path / name)
        cases[name] = tmp_path / name
    data = bytearray((cases["tampered"] / m.artifact).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (cases["tampered"] / m.artifact).write_bytes(bytes(data))
    (cases["truncated"] / m.artifact).write_bytes(data[: len(data) // 3])
    man = json.loads((cases["manifest_sha"] / "manifest.json").read_text())
    man["sha256"] = "0" * 64
    (cases["manifest_sha"] / "manifest.json").write_text(json.dumps(man))
    (cases["missing"] / m.artifact).unlink()
    (cases["badjson"] / "manifest.json").write_text("{not json")
    expect = {"tampered": "does not match the manifest", "truncated": "differs from the manifest",
              "manifest_sha": "does not match the manifest", "missing": "is missing", "badjson": "not valid JSON"}
    for name, needle in expect.items():
        with pytest.raises(EdgevitError, match=needle) as err:
            load_artifact(cases[name])
        assert "\n" not in str(err.value)
    with pytest.raises(EdgevitError, match="not the model file"):
        read_manifest(src / m.artifact)


def test_evaluate_artifact_folder_matches_manifest_fidelity(onnx_fp32, voc):
    out, m = onnx_fp32
    result = edgevit.evaluate(str(out), voc, "voc", progress=False)
    assert result.model == f"{MODEL} (onnx/fp32)"
    assert result.confusion.miou() == pytest.approx(m.fidelity["miou_artifact"], abs=1e-9)


def test_gate_failure_writes_nothing_and_no_gate_overrides(voc, tmp_path):
    out = tmp_path / "gated"
    impossible = Gate(max_miou_drop=1.0, min_agreement=1.01)
    with pytest.raises(GateError, match="misses its accuracy budget.*pixel agreement"):
        export(MODEL, "onnx", "fp32", out, calib=voc, calib_layout="voc", input_size="64x64", gate=impossible,
               progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())
    m = export(MODEL, "onnx", "fp32", out, calib=voc, calib_layout="voc", input_size="64x64", gate=None,
               progress=False)
    assert m.fidelity["gate_result"] == "passed"


def test_bad_requests_are_one_line_errors(voc, tmp_path):
    with pytest.raises(EdgevitError, match="needs real calibration images"):
        export(MODEL, "onnx", "int8", tmp_path / "a", eval_data=voc, eval_layout="voc", input_size="64x64")
    with pytest.raises(EdgevitError, match="not a multiple of 32"):
        export(MODEL, "onnx", "fp32", tmp_path / "b", calib=voc, input_size="65x64")
    with pytest.raises(EdgevitError, match="precision 'fp16' is not supported"):
        export(MODEL, "onnx", "fp16", tmp_path / "c", calib=voc, input_size="64x64")
    with pytest.raises(EdgevitError, match="did you mean 'onnx'"):
        export(MODEL, "onx", "fp32", tmp_path / "d", calib=voc)
    with pytest.raises(EdgevitError, match="did you mean 'percentile'"):
        export(MODEL, "onnx", "int8", tmp_path / "e", calib=voc, input_size="64x64", ranges="percentil")
    with pytest.raises(EdgevitError, match="pte: activation ranges 'minmax' are not implemented"):
        export(MODEL, "pte", "int8", tmp_path / "f", calib=voc, input_size="64x64", ranges="minmax")
    assert not list(tmp_path.iterdir())


def test_segmentation_onnx_int8_takes_percentile_ranges_by_default(voc, tmp_path):
    """The task's measured choice applies when no method is named; a named one overrides it."""
    kw = dict(calib=voc, calib_layout="voc", input_size="64x64", gate=None, progress=False)
    default = export(MODEL, "onnx", "int8", tmp_path / "default", **kw)
    named = export(MODEL, "onnx", "int8", tmp_path / "minmax", ranges="minmax", **kw)
    assert default.quantization["calibration_method"].startswith("Percentile")
    assert named.quantization["calibration_method"].startswith("MinMax")
    assert default.sha256 != named.sha256


def test_bench_table_with_a_failing_row(voc, tmp_path):
    rows = bench(MODEL, voc, tmp_path, layout="voc", formats=("onnx",), precisions=("fp32", "fp16"),
                 input_size="64x64", runs=3, limit=3, progress=False)
    eager, ok, bad = rows
    assert eager.format == "eager" and eager.p50_ms > 0 and eager.vs_eager == 1.0
    assert ok.status == "ok" and ok.agreement > 0.999 and ok.p50_ms > 0 and ok.size_mb > 0 and ok.peak_mb > 0
    assert ok.vs_roofline > 0 and ok.load_s >= 0
    assert bad.status.startswith("error:") and "fp16" in bad.status and bad.p50_ms is None
    table = (tmp_path / "bench.md").read_text()
    assert "| onnx | fp32 | ok |" in table and "| onnx | fp16 | error:" in table
    assert "<svg" in (tmp_path / "bench.html").read_text()
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["meta"]["input"] == [1, 3, 64, 64] and len(saved["rows"]) == 3


def test_gated_fallback_keeps_the_least_quantizable_layers_until_the_gate_passes():
    """The shared lower-measure-retry loop (generic export and SAM): 1, then up to 2 more of the lowest-SQNR layers
    are kept float until the attempt passes; without retry it stops after one attempt; the error names the worst."""
    import torch
    from torch import nn

    from edgevit.export import MAX_FALLBACK_ROUNDS, gate_error, gated_fallback

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 3, 1)).eval()
    with torch.no_grad():
        net[2].weight[0] *= 200  # one output channel far out of range: per-channel weights cope, activations do not
    xs = [np.random.default_rng(i).random((1, 3, 16, 16), dtype=np.float32) for i in range(10)]
    calls: list[list[str]] = []

    def attempt(kept: list[str]) -> tuple[int, list[str]]:
        calls.append(list(kept))
        return len(kept), ([] if len(kept) >= 3 else ["agreement too low"])

    fid, failures, kept, sens = gated_fallback(attempt, net, xs, ("4",), True, False)
    ranked = [s.name for s in sorted(sens, key=lambda s: s.sqnr_db) if s.name != "4"]
    assert len(ranked) == 2 and calls == [["4"], ["4", ranked[0]], ["4", *ranked]] and fid == 3 and failures == []
    assert kept[0] == {"name": "4", "why": "requested"} and "emulated int8 SQNR" in kept[1]["why"]
    calls.clear()
    _, failures, kept, sens = gated_fallback(attempt, net, xs, (), False, False)
    assert calls == [[]] and failures == ["agreement too low"] and sens is None and kept == []
    calls.clear()

    def never(kept: list[str]) -> tuple[int, list[str]]:
        calls.append(list(kept))
        return 0, ["never passes"]

    gated_fallback(never, net, xs, (), True, False)
    assert len(calls) == MAX_FALLBACK_ROUNDS + 1  # bounded even when keeping layers float never helps
    err = gate_error("m onnx/int8", ["agreement too low"], "somewhere", None, kept)
    assert "misses its accuracy budget (agreement too low) on somewhere; worst layers: n/a" in str(err)
