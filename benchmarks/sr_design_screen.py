"""Latency screen of super-resolution designs before training them: random-init EfficientViT-SR configs and the
FSRCNN-sized baseline, exported fp32 at one input size, timed side by side (interleaved, median) eager and as
.pte / .tflite. Latency does not depend on the weights at fp32, so a design can be ruled out (or in) against the
baseline's latency before spending a training run on it. Prints a markdown table with MACs.

    .venv/bin/python benchmarks/sr_design_screen.py [--size 480x640] [--threads 2] [--runs 5]
        [--formats pte,tflite] [--configs s,fuse2,depth1,...] [--scale 2|4]

A config name with the suffix ``-noattn`` (e.g. ``s-noattn``) is a diagnostic, not a design: the same network
with each window attention's arithmetic (window reshapes / permutes and products) replaced by a channel slice of
its qkv, so the difference to the plain config is what that arithmetic costs in each runtime.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgevit
from edgevit.lowering.base import ExportRequest, get_backend
from edgevit.lowering.rewrite import export_friendly
from edgevit.manifest import Manifest
from edgevit.models.efficientvit_sr import VARIANTS, EfficientViTSR, SRConfig, WindowLiteMLA
from edgevit.models.profile import count_macs

S = VARIANTS["s"]
CONFIGS: dict[str, SRConfig] = {
    "s": S,
    "t": VARIANTS["t"],  # the trunk at a quarter of the LR resolution, six 16-channel fuse convs
    "fuse2": SRConfig(stem=24, width=32, depth=2, fuse=2),
    "fuse1": SRConfig(stem=24, width=32, depth=2, fuse=1),
    "depth1": SRConfig(stem=24, width=32, depth=1, fuse=3),
    "depth1-fuse2": SRConfig(stem=24, width=32, depth=1, fuse=2),
    "stem16-fuse2": SRConfig(stem=16, width=32, depth=2, fuse=2),
    "w24-depth1-fuse2": SRConfig(stem=24, width=24, depth=1, fuse=2, dim=12),
    "depth0": SRConfig(stem=24, width=32, depth=0, fuse=3),  # the conv trunk alone: what the blocks cost
    "depth1-fuse1": SRConfig(stem=24, width=32, depth=1, fuse=1),
    "fuse0": SRConfig(stem=24, width=32, depth=2, fuse=0),
    "depth1-fuse0": SRConfig(stem=24, width=32, depth=1, fuse=0),
    # the trunk at a quarter of the LR resolution (a sixteenth of the pixels)
    "q": SRConfig(stem=24, width=32, depth=2, fuse=3, levels=2),
    "q-w48-fuse2": SRConfig(stem=24, width=48, depth=2, fuse=2, levels=2),
    "q-depth3-fuse2": SRConfig(stem=24, width=32, depth=3, fuse=2, levels=2),
    "q-depth4-fuse1": SRConfig(stem=24, width=32, depth=4, fuse=1, levels=2),
    "q-stem32-fuse1": SRConfig(stem=32, width=32, depth=2, fuse=1, levels=2),
    "q-stem20-fuse3": SRConfig(stem=20, width=32, depth=2, fuse=3, levels=2),
    "q-stem16-fuse4": SRConfig(stem=16, width=32, depth=2, fuse=4, levels=2),
    "q-fuse2": SRConfig(stem=24, width=32, depth=2, fuse=2, levels=2),  # = t at x4 (SCALE_VARIANTS)
    "q-win4-fuse2": SRConfig(stem=24, width=32, depth=2, fuse=2, levels=2, window=4),
}
NO_ATTENTION = "-noattn"


def _without_attention_arithmetic(model: EfficientViTSR) -> EfficientViTSR:
    """Each window attention returns the first third of its qkv channels (same shape, no attention math)."""
    for m in model.modules():
        if isinstance(m, WindowLiteMLA):
            m.attend = lambda t: t[:, : t.shape[1] // 3]
    return model


def _runner(fmt: str, model: torch.nn.Module, shape: tuple[int, ...], folder: Path, threads: int, scale: int):
    """Export ``model`` fp32 to ``fmt`` and load it with that backend's own runner (1×3×h×w → 1×3×sh×sw)."""
    backend = get_backend(fmt)
    art = folder / f"model{backend.extension}"
    backend.export(ExportRequest(model, shape, "fp32", art))
    io_spec = lambda name, s: [{"name": name, "shape": list(s), "dtype": "float32", "layout": "NCHW"}]  # noqa: E731
    out_shape = (*shape[:2], scale * shape[2], scale * shape[3])
    manifest = Manifest("sr-design-screen", fmt, "fp32", art.name, "", art.stat().st_size, io_spec("image", shape),
                        io_spec("logits", out_shape), {}, {})
    return backend.load(art, manifest, threads)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="480x640")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--formats", default="pte,tflite")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--scale", type=int, default=2, choices=(2, 4))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    h, w = map(int, a.size.split("x"))
    shape = (1, 3, h, w)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    ref = f"fsrcnn-x{a.scale}"
    models: dict[str, torch.nn.Module] = {ref: edgevit.create_model(ref).eval()}
    for name in a.configs.split(","):
        torch.manual_seed(0)
        base = name.removesuffix(NO_ATTENTION)
        models[name] = EfficientViTSR(CONFIGS[base], a.scale).eval()
        if name != base:
            _without_attention_arithmetic(models[name])
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            friendly, _ = export_friendly(model, torch.from_numpy(x))
            fns = {"eager": lambda m=model: m(torch.from_numpy(x))}
            for fmt in filter(None, a.formats.split(",")):
                folder = Path(tmp) / f"{name}-{fmt}"
                folder.mkdir()
                print(f"  export {name} {fmt} ...", file=sys.stderr, flush=True)
                run = _runner(fmt, friendly, shape, folder, a.threads, a.scale)
                fns[fmt] = lambda r=run: r(x)
            params = sum(t.numel() for t in model.parameters())
            rows[name] = {"fns": fns, "macs": count_macs(model, shape), "params": params, "times": {}}
        cols = list(rows[ref]["fns"])
        with torch.inference_mode():
            for r in rows.values():
                for f in r["fns"].values():
                    f()
            for _ in range(a.runs):
                for r in rows.values():
                    for c, f in r["fns"].items():
                        t = time.perf_counter()
                        f()
                        r["times"].setdefault(c, []).append(time.perf_counter() - t)
    base = {c: statistics.median(rows[ref]["times"][c]) for c in cols}
    print(f"{h}x{w} input x{a.scale}, fp32, {a.threads} threads, median of {a.runs} interleaved runs (ms; in brackets: time "
          f"relative to FSRCNN in the same runtime)\n")
    print("| design | params | GMACs | " + " | ".join(cols) + " |\n|---|---|---|" + "---|" * len(cols))
    for name, r in rows.items():
        cells = []
        for c in cols:
            t = statistics.median(r["times"][c])
            cells.append(f"{1000 * t:.0f} ({t / base[c]:.2f})")
        print(f"| {name} | {r['params'] / 1e3:.1f}k | {r['macs'] / 1e9:.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
