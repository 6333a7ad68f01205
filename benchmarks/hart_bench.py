"""HART per-stage generation latency: eager PyTorch vs exported artifact folders, side by side in one run.

    .venv/bin/python benchmarks/hart_bench.py --model runs/hart/teacher/hart [--artifacts DIR,DIR,...]
        [--runs 3] [--threads 1] [--class 0]

Each row generates one image (CFG as in the artifact's manifest, 1.5 for eager) ``--runs`` times after one
warm-up, seeds 0.., and reports the median total and the median per-stage time: AR steps (all scales, host
work excluded), diffusion (all 8 MLP calls), decoder; plus the host loop remainder and images/s.
Artifacts are also checked for the eager tokens at the same seed (``tokens ok``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from edgevit.hart.artifacts import load_hart_artifacts  # noqa: E402
from edgevit.hart.checkpoint import load_folder  # noqa: E402
from edgevit.hart.export import generate_one  # noqa: E402
from edgevit.hart.sampler import EagerPrograms, SamplerSettings  # noqa: E402


def timed(seconds: dict[str, float], key: str, fn, *args):
    """``fn(*args)``, adding its wall time to ``seconds[key]``."""
    t0 = time.perf_counter()
    out = fn(*args)
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0
    return out


class TimedEager(EagerPrograms):
    """Eager programs that time the same three stages the artifact runners time."""

    def __init__(self, model):
        super().__init__(model)
        self.seconds: dict[str, float] = {}
        step, decode = self.step, self.decode
        self.step = lambda *a: self._timed("steps", step, *a)
        self.decode = lambda z: self._timed("decoder", decode, z)

    def _timed(self, key, fn, *args):
        return timed(self.seconds, key, fn, *args)

    def residual(self, z, guidance, generator, temperature):
        net = lambda x, t, c: self._timed("diffusion", self.net, x, t, c)  # noqa: E731
        return self.model.diffusion.sample(z, guidance, generator, temperature, net=net)


def stages(seconds: dict[str, float]) -> dict[str, float]:
    steps = sum(v for k, v in seconds.items() if k.startswith("step"))
    return {"steps": steps, "diffusion": seconds.get("diffusion", 0.0), "decoder": seconds.get("decoder", 0.0)}


def bench(name, programs, host, settings, label, runs, reference=None):
    rows, ok = [], True
    for i in range(runs + 1):
        programs.seconds.clear()
        t0 = time.perf_counter()
        g = generate_one(programs, host, label, i, settings)
        total = time.perf_counter() - t0
        if reference is not None:
            ref = generate_one(reference, host, label, i, settings) if i else None
            ok &= ref is None or all(torch.equal(a, b) for a, b in zip(ref.tokens, g.tokens))
        if i:
            rows.append({"total": total, **stages(programs.seconds)})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["host"] = med["total"] - med["steps"] - med["diffusion"] - med["decoder"]
    return name, med, ok if reference is not None else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--artifacts", default="")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--class", dest="label", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = load_folder(a.model).eval()
    results = [bench("eager fp32", TimedEager(model), model, SamplerSettings(cfg=1.5), a.label, a.runs)]
    for folder in filter(None, a.artifacts.split(",")):
        arts = load_hart_artifacts(folder, a.threads)
        m = arts.manifest
        results.append(bench(f"{m['format']} {m['precision']}", arts.programs, arts.model, arts.settings, a.label,
                             a.runs, reference=EagerPrograms(model)))
    g = model.cfg.guidance_distilled
    mode = f"guidance {g:g} distilled (one branch)" if g else "CFG 1.5 (two branches)"
    print(f"{model.cfg.name}, one image, {mode}, threads {a.threads}, median of {a.runs} runs (ms)")
    print("| program | total | AR steps | diffusion (8) | decoder | host | images/s | tokens vs eager |")
    print("|---|---|---|---|---|---|---|---|")
    for name, med, ok in results:
        ms = {k: 1e3 * v for k, v in med.items()}
        print(f"| {name} | {ms['total']:.1f} | {ms['steps']:.1f} | {ms['diffusion']:.1f} | {ms['decoder']:.1f} | "
              f"{ms['host']:.1f} | {1 / med['total']:.2f} | {'-' if ok is None else ('same' if ok else 'DIFFER')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
