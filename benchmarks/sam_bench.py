"""EfficientViT-SAM latency benchmark: image encoders and the prompt decoder, side by side in one run.

    .venv/bin/python benchmarks/sam_bench.py [--threads 2] [--runs 5] [--vit-runs 2] [--decoder-runs 20] [--out runs/sam_bench]

Rows (random weights, same process, same threads; p50 of ``--runs`` timed calls after one warm-up):
- efficientvit-sam-l0 / -xl0 image encoder, eager fp32 PyTorch, at 512 / 1024
- SAM ViT-B image encoder (our own implementation, benchmarks/sam_vit_b.py), eager fp32, at 1024
- the prompt decoder (16 prompt slots, mask input on) of L0, eager fp32
Issue targets measured here: ViT-B / L0 encoder ratio; decoder time as a fraction of the L0 encoder.
Rows for exported artifacts are added by appending ``Row``s whose ``fn`` calls a runner (see ``rows``).
Writes ``sam_bench.json`` and ``sam_bench.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sam_vit_b import SamViTB  # noqa: E402

from edgevit import io  # noqa: E402
from edgevit.models import count_macs, count_params, create_model  # noqa: E402


@dataclass
class Row:
    name: str
    runner: str  # "eager fp32", later e.g. "pte int8"
    input: str
    params: int
    fn: Callable[[], object]
    runs: int
    p50_s: float = float("nan")

    def measure(self) -> None:
        self.fn()  # warm-up
        times = []
        for _ in range(self.runs):
            start = time.perf_counter()
            self.fn()
            times.append(time.perf_counter() - start)
        self.p50_s = statistics.median(times)


def _encoder_row(model_id: str, runs: int) -> tuple[Row, torch.nn.Module]:
    model = create_model(model_id)
    s = model.contract.image_size
    x = torch.randn(1, 3, s, s)
    return Row(f"{model_id} encoder", "eager fp32", f"1x3x{s}x{s}", count_params(model.image_encoder),
               lambda: _infer(model.image_encoder, x), runs), model


def _infer(module: torch.nn.Module, *args: torch.Tensor) -> object:
    with torch.inference_mode():
        return module(*args)


def rows(args: argparse.Namespace) -> tuple[list[Row], dict[str, float]]:
    l0_row, l0 = _encoder_row("efficientvit-sam-l0", args.runs)
    xl0_row, _ = _encoder_row("efficientvit-sam-xl0", args.runs)
    vit = SamViTB().eval()
    x = torch.randn(1, 3, 1024, 1024)
    vit_row = Row("SAM ViT-B encoder (ours)", "eager fp32", "1x3x1024x1024", count_params(vit),
                  lambda: _infer(vit, x), args.vit_runs)
    dec = l0.prompt_decoder.eval()
    p = l0.contract.max_points
    inputs = (torch.randn(1, 256, 64, 64), torch.rand(1, p, 2) * 1024, torch.tensor([[1.0, 0.0, 2.0, 3.0] + [-1.0] * (p - 4)]),
              torch.randn(1, 1, 256, 256), torch.ones(1))
    dec_row = Row("prompt decoder (L0)", "eager fp32", f"{p} prompt slots + mask", count_params(dec),
                  lambda: _infer(dec, *inputs), args.decoder_runs)
    macs = {"l0": count_macs(l0.image_encoder, (1, 3, 512, 512)), "vit": count_macs(vit, (1, 3, 1024, 1024))}
    return [l0_row, xl0_row, vit_row, dec_row], macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vit-runs", type=int, default=2)
    ap.add_argument("--decoder-runs", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "runs" / "sam_bench"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table, macs = rows(args)
    for row in table:
        print(f"measuring {row.name} ({row.runner}, {row.runs} runs) ...", file=sys.stderr, flush=True)
        row.measure()
    l0 = table[0].p50_s
    lines = [f"threads={args.threads}, torch {torch.__version__}; ratios against the L0 encoder in this run",
             "", "| model | runner | input | params | p50 | vs L0 encoder |", "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r.name} | {r.runner} | {r.input} | {r.params / 1e6:.1f}M | {r.p50_s * 1e3:.0f} ms | "
                     f"{r.p50_s / l0:.2f}x |")
    lines += ["", f"ViT-B encoder / L0 encoder: {table[2].p50_s / l0:.1f}x (MACs {macs['vit'] / 1e9:.0f}G vs "
              f"{macs['l0'] / 1e9:.1f}G); prompt decoder = {100 * table[3].p50_s / l0:.1f}% of the L0 encoder"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    io.write_text(out / "sam_bench.md", text + "\n")
    io.write_json(out / "sam_bench.json", {"threads": args.threads, "rows": [
        {"name": r.name, "runner": r.runner, "input": r.input, "params": r.params, "runs": r.runs, "p50_s": r.p50_s}
        for r in table]})


if __name__ == "__main__":
    main()
