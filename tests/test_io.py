"""edgevit.io: image/label reading, atomic writers."""

import json

import numpy as np
import pytest
from PIL import Image

from edgevit import io
from edgevit.errors import EdgevitError


def _rgb(h: int = 4, w: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- read_image -----------------------------------------------------------------------------------


def test_read_image_rgb_png_round_trip(tmp_path):
    image = _rgb()
    io.write_png(tmp_path / "a.png", image)
    out = io.read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, image)


def test_read_image_converts_gray_palette_and_rgba(tmp_path):
    gray = np.array([[0, 100], [200, 255]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))

    pal = Image.fromarray(np.array([[0, 1]], np.uint8))
    pal.putpalette([10, 20, 30, 40, 50, 60])
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "pal.png"), [[[10, 20, 30], [40, 50, 60]]])

    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[..., :3] = [[[1, 2, 3], [4, 5, 6]]]  # alpha 0: colour kept, alpha dropped
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgba.png"), [[[1, 2, 3], [4, 5, 6]]])


def test_read_image_scales_16_bit_gray(tmp_path):
    io.write_png(tmp_path / "g16.png", np.array([[0, 257, 32896, 65535]], np.uint16))
    out = io.read_image(tmp_path / "g16.png")
    # v / 257 rounded: 0, 1, 128, 255 (32896 = 128 * 257)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_read_image_ignores_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    Image.fromarray(_rgb(2, 6)).save(tmp_path / "rot.jpg", exif=exif)
    assert io.read_image(tmp_path / "rot.jpg").shape == (2, 6, 3)


def _assert_unreadable(path, reason: str) -> None:
    with pytest.raises(EdgevitError) as info:
        io.read_image(path)
    message = str(info.value)
    assert str(path) in message and "not a readable image" in message and reason in message
    assert "\n" not in message


def test_read_image_errors_name_the_path(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    _assert_unreadable(tmp_path / "notes.txt", "cannot identify image file")

    io.write_png(tmp_path / "full.png", _rgb(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _assert_unreadable(tmp_path / "cut.png", "truncated")

    _assert_unreadable(tmp_path / "missing.png", "no such file")
    _assert_unreadable(tmp_path, "is a directory")


# --- read_label -----------------------------------------------------------------------------------


def test_read_label_keeps_stored_values(tmp_path):
    idx = np.array([[0, 1, 255], [20, 3, 0]], np.uint8)
    io.write_png(tmp_path / "p.png", idx, palette=np.array([[0, 0, 0], [128, 0, 0]], np.uint8))
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = io.read_label(tmp_path / "p.png")  # palette indices, not colours
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, idx)

    io.write_png(tmp_path / "l.png", idx)
    np.testing.assert_array_equal(io.read_label(tmp_path / "l.png"), idx)

    wide = np.array([[0, 300], [65535, 7]], np.uint16)
    io.write_png(tmp_path / "w.png", wide)
    out = io.read_label(tmp_path / "w.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, wide)


def test_read_label_rejects_colour_labels(tmp_path):
    io.write_png(tmp_path / "rgb.png", _rgb())
    with pytest.raises(EdgevitError, match="rgb.png: label map has image mode 'RGB'"):
        io.read_label(tmp_path / "rgb.png")


def test_read_label_unreadable(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(EdgevitError, match="x.png: not a readable label map"):
        io.read_label(tmp_path / "x.png")


# --- writers --------------------------------------------------------------------------------------


def test_write_png_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(EdgevitError, match="float32"):
        io.write_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))
    with pytest.raises(EdgevitError, match="palette needs a uint8"):
        io.write_png(tmp_path / "c.png", _rgb(), palette=np.zeros((2, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # parent is created
    with io.atomic_write(target) as f:
        f.write(b"abc")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"abc"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with io.atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temp file

    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target, "w") as f:
            f.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_write_json_sorted_indented_numpy_aware(tmp_path):
    io.write_json(tmp_path / "r.json", {"b": np.float32(0.5), "a": [np.int64(3)], "c": np.arange(2)})
    text = (tmp_path / "r.json").read_text()
    assert text == '{\n  "a": [\n    3\n  ],\n  "b": 0.5,\n  "c": [\n    0,\n    1\n  ]\n}\n'
    assert json.loads(text)["b"] == 0.5


def test_write_json_refuses_nan_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        io.write_json(tmp_path / "r.json", {"miou": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_write_text_utf8(tmp_path):
    io.write_text(tmp_path / "t.md", "mIoU ≥ 0.5\n")
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == "mIoU ≥ 0.5\n"


@pytest.mark.parametrize("text, why", [(None, "missing; run it"), ("{oops", "not valid JSON"), ("[1, 2]", "expected a JSON object, got list")])
def test_read_json_object_errors_name_the_file(tmp_path, text, why):
    path = tmp_path / "x.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(EdgevitError, match=why) as info:
        io.read_json_object(path, "run it")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_json_object_returns_the_object(tmp_path):
    io.write_json(tmp_path / "a.json", {"k": [1, 2]})
    assert io.read_json_object(tmp_path / "a.json", "unused") == {"k": [1, 2]}
