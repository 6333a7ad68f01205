"""The edgevit command line: one clear line on every error, nothing half-written, real outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from edgevit import io
from edgevit.cli import main

B0 = "efficientvit-seg-b0-cityscapes"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_and_filter(capsys):
    code, out, _ = _run(capsys, "list", "*-b1-*")
    assert code == 0
    assert out.split() == ["efficientvit-seg-b1-ade20k", "efficientvit-seg-b1-cityscapes"]


def test_info_reports_params_macs_and_contract(capsys):
    code, out, _ = _run(capsys, "info", B0)
    assert code == 0
    assert "params   0.707M" in out and "(published 0.7M" in out
    assert "MACs     4.39G at 1024x2048" in out
    assert "mean [0.485, 0.456, 0.406]" in out and "cityscapes (19 classes, ignore 255)" in out
    code, out, _ = _run(capsys, "info", B0, "--json")
    info = json.loads(out)
    assert info["contract"]["outputs"][0]["shape"] == ["N", 19, "H/8", "W/8"]
    assert abs(info["macs_vs_published"]) < 0.01


def test_unknown_model_is_one_line_with_suggestion(capsys):
    code, out, err = _run(capsys, "info", "efficientvit-seg-b9-cityscapes")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "did you mean" in err


def test_predict_writes_labels_overlays_summary(tmp_path, capsys, shared_data):
    images = sorted((shared_data / "seg" / "voc2012_val14" / "images").glob("*.png"))[:2]
    out_dir = tmp_path / "pred"
    code, out, err = _run(capsys, "predict", "efficientvit-seg-b1-ade20k", *map(str, images), "--out", str(out_dir))
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert len(summary["images"]) == 2 and summary["contract"]["resize"]["kind"] == "ShortSide"
    for rec, path in zip(summary["images"], images):
        labels = io.read_label(out_dir / rec["labels"])
        h, w = Image.open(path).size[::-1]
        assert labels.shape == (h, w) and labels.max() < 150
        assert io.read_image(out_dir / rec["overlay"]).shape == (h, w, 3)
        assert rec["model_input"] == [1, 3, 512, 512]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["summary.json"] + [f"{p.stem}_{k}.png" for p in images for k in ("labels", "overlay")])


def test_predict_non_image_writes_nothing(tmp_path, capsys):
    good = tmp_path / "good.png"
    io.write_png(good, np.zeros((32, 32, 3), np.uint8))
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    out_dir = tmp_path / "out"
    code, _, err = _run(capsys, "predict", B0, str(good), str(bad), "--out", str(out_dir))
    assert code == 2 and str(bad) in err and err.count("\n") == 1
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_predict_with_corrupt_weights_is_one_line(tmp_path, capsys):
    img = tmp_path / "a.png"
    io.write_png(img, np.zeros((32, 32, 3), np.uint8))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"PK\x03\x04 definitely not a zip")
    code, _, err = _run(capsys, "predict", B0, str(img), "--weights", str(weights), "--out", str(tmp_path / "o"))
    assert code == 2 and str(weights) in err and err.count("\n") == 1


def test_eval_on_real_voc_images(tmp_path, capsys, shared_data):
    # A VOC-labelset head on the B0 architecture: random weights, so the score is low but the pipeline is real.
    torch.manual_seed(0)
    code, out, err = _run(capsys, "eval", B0, "--data", str(shared_data / "seg" / "voc2012_val14"), "--layout", "voc",
                          "--labelset", "voc", "--limit", "2", "--out", str(tmp_path), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 2 and 0 <= result["miou"] <= 1 and 0 <= result["pixel_accuracy"] <= 1
    assert json.loads((tmp_path / "eval.json").read_text())["miou"] == result["miou"]
    assert (tmp_path / "eval.md").read_text().startswith("| " + B0)


def test_eval_label_set_mismatch_is_explained(capsys, shared_data):
    code, _, err = _run(capsys, "eval", B0, "--data", str(shared_data / "seg" / "voc2012_val14"), "--layout", "voc")
    assert code == 2 and "21 classes" in err and "19" in err


def test_console_script_prints_no_traceback(tmp_path):
    exe = [sys.executable, "-m", "edgevit.cli"]
    proc = subprocess.run([*exe, "eval", B0, "--data", str(tmp_path / "nowhere"), "--layout", "cityscape"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "did you mean 'cityscapes'" in proc.stderr or "nowhere" in proc.stderr


def test_export_ranges_typo_is_one_line(tmp_path, capsys, shared_data):
    """--ranges reaches edgevit.export.export: a typo is refused before any work, with a suggestion."""
    code, out, err = _run(capsys, "export", "efficientvit-seg-b0-voc", "--format", "onnx", "--precision", "int8",
                          "--calib", str(shared_data / "seg" / "voc2012_val14"), "--ranges", "percentil",
                          "--out", str(tmp_path / "a"))
    assert code == 2 and err.count("\n") == 1 and "did you mean 'percentile'" in err
    assert not list(tmp_path.iterdir())


def test_export_placement_is_checked_before_work(tmp_path, capsys, shared_data):
    """--placement reaches edgevit.export.export: a typo, and a placement the format lacks, are one line each."""
    calib = str(shared_data / "seg" / "voc2012_val14")
    code, _, err = _run(capsys, "export", "efficientvit-seg-b0-voc", "--format", "onnx", "--precision", "int8",
                        "--calib", calib, "--placement", "weigthed", "--out", str(tmp_path / "a"))
    assert code == 2 and err.count("\n") == 1 and "did you mean 'weighted'" in err
    code, _, err = _run(capsys, "export", "efficientvit-seg-b0-voc", "--format", "tflite", "--precision", "int8",
                        "--calib", calib, "--placement", "weighted", "--out", str(tmp_path / "b"))
    assert code == 2 and err.count("\n") == 1 and "tflite: int8 placement 'weighted' is not implemented" in err
    assert not list(tmp_path.iterdir())
