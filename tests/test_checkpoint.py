"""Loading upstream-layout checkpoint files: formats, strictness, refusal of code-carrying pickles."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import edgevit
from edgevit.errors import EdgevitError

B0 = "efficientvit-seg-b0-cityscapes"


def _upstream_state_dict(model_id: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with upstream key names: seeded random init plus non-trivial BN statistics."""
    torch.manual_seed(seed)
    sd = edgevit.create_model(model_id).state_dict()
    for k, v in sd.items():
        if k.endswith("running_mean") or k.endswith("norm.bias"):
            v.normal_(0, 0.1)
        elif k.endswith("running_var") or k.endswith("norm.weight"):
            v.uniform_(0.5, 1.5)
    return sd


def _assert_loaded(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in sd.items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(own[k.removeprefix("module.")], v, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["state_dict", "bare", "safetensors", "dataparallel", "no_bn_counters"])
def test_upstream_checkpoint_layouts_load(tmp_path, layout):
    sd = _upstream_state_dict(B0)
    path = tmp_path / "ckpt.bin"  # content decides the format, not the name
    if layout == "state_dict":
        torch.save({"state_dict": sd, "epoch": torch.tensor(3)}, path)
    elif layout == "bare":
        torch.save(sd, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif layout == "dataparallel":
        sd = {f"module.{k}": v for k, v in sd.items()}
        torch.save({"state_dict": sd}, path)
    else:
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        torch.save(sd, path)
    model = edgevit.create_model(B0, weights=path)
    _assert_loaded(model, sd)


def test_loaded_weights_change_the_output(tmp_path):
    path = tmp_path / "b0.pt"
    torch.save({"state_dict": _upstream_state_dict(B0, seed=1)}, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        a = edgevit.create_model(B0, weights=path)(x)
        b = edgevit.create_model(B0, weights=path)(x)
        c = edgevit.create_model(B0)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_checkpoint_of_another_variant_is_rejected_with_the_keys(tmp_path):
    path = tmp_path / "b1.pt"
    torch.save({"state_dict": edgevit.create_model("efficientvit-seg-b1-cityscapes").state_dict()}, path)
    with pytest.raises(EdgevitError) as err:
        edgevit.create_model(B0, weights=path)
    msg = str(err.value)
    assert str(path) in msg and "mis-shaped" in msg and "backbone.input_stem.op_list.0.conv.weight" in msg
    assert "\n" not in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = _upstream_state_dict(B0)
    del sd["head.output_ops.0.op_list.1.conv.bias"]
    sd["head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "b0.pt"
    torch.save(sd, path)
    with pytest.raises(EdgevitError, match=r"1 missing \(head\.output_ops\.0\.op_list\.1\.conv\.bias\).*"
                                           r"1 unexpected \(head\.extra\.weight\)"):
        edgevit.create_model(B0, weights=path)


def test_corrupted_and_truncated_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(_upstream_state_dict(B0), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes((100).to_bytes(8, "little") + b'{"a": 1')
    for path in (truncated, garbage, bad_st, tmp_path / "missing.pt"):
        with pytest.raises(EdgevitError) as err:
            edgevit.create_model(B0, weights=path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _upstream_state_dict(B0), "payload": exploit}, path, pickle_protocol=2)
    with pytest.raises(EdgevitError, match="refused to unpickle"):
        edgevit.create_model(B0, weights=path)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps(exploit, protocol=2))
    with pytest.raises(EdgevitError):
        edgevit.create_model(B0, weights=legacy)
    assert not marker.exists()
