"""HART proof at small scale: teacher vs distilled student vs DiT baseline (and the student's .pte sampler),
one interleaved run on the same threads: params, MACs/image, per-stage latency, images/s, quality proxies,
a sample grid, and the issue's targets.

    .venv/bin/python benchmarks/hart_proof.py --teacher runs/hart/teacher/hart \\
        --student runs/hart/distill-phone/hart --baseline runs/hart/dit/dit.pt --pte runs/hart/student-pte \\
        [--per-class 16 --runs 5 --threads 1 --cfg 1.5 --out runs/hart/proof]

Every image is generated at batch 1 from ``torch.Generator().manual_seed(seed)`` with the same class and seed for
every model and classifier-free guidance ``--cfg`` (HART: ramp over scales; DiT: constant), so the grid
compares like with like. Latency: ``--runs`` rounds after one warm-up round; each round generates one image with
every model in turn (class round % classes, seed 1000 + round), median per model. Quality: Fréchet distance of
``--per-class`` images per class (seeds 0..) against as many held-out real crops, under two fixed extractors
(:mod:`edgevit.hart.quality`: ``random-cnn`` and ``thumbnail``), with the real-vs-real reference (train vs
held-out crops). ``--pte``: the student exported with ``export_hart(student, "pte", DIR)`` (exported first if the
folder is missing); its images are checked against the eager student's for the grid's classes and seeds.
Writes ``OUT/grid.png`` (rows: held-out real, teacher, student, student .pte, baseline; columns: class-major,
seeds 0..``--grid-seeds``-1) and ``OUT/proof.json``; prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hart_bench import TimedEager, stages, timed  # noqa: E402

from edgevit.hart.checkpoint import load_folder  # noqa: E402
from edgevit.hart.dit import DiT, load_dit  # noqa: E402
from edgevit.hart.export import generate_one  # noqa: E402
from edgevit.hart.model import HartModel  # noqa: E402
from edgevit.hart.profile import _macs, generation_macs  # noqa: E402
from edgevit.hart.quality import feature_distance  # noqa: E402
from edgevit.hart.sampler import SamplerSettings, resolve_guidance  # noqa: E402
from edgevit.hart.samples import image_grid  # noqa: E402
from edgevit.hart.train import photo_crops  # noqa: E402
from edgevit.io import write_json, write_png, write_text  # noqa: E402

EXTRACTORS = ("random-cnn", "thumbnail")


class HartGen:
    """Seeded single-image HART generation over timed programs (eager or artifact runners)."""

    def __init__(self, programs, host: HartModel, settings: SamplerSettings):
        self.programs, self.host, self.settings = programs, host, settings

    def __call__(self, label: int, seed: int):
        self.programs.seconds.clear()
        g = generate_one(self.programs, self.host, label, seed, self.settings)
        return g.images, stages(self.programs.seconds), g.tokens


class DiTGen:
    """Seeded single-image DiT generation with the ε network and the decoder timed."""

    def __init__(self, model: DiT, cfg: float):
        self.model, self.cfg, self.seconds, self.eps = model, cfg, {}, model.denoiser()

    def _timed(self, key, fn, *args):
        return timed(self.seconds, key, fn, *args)

    def __call__(self, label: int, seed: int):
        self.seconds = {}
        gen = torch.Generator().manual_seed(seed)
        labels = torch.tensor([label])
        with torch.inference_mode():  # as the HART sampler
            lat = self.model.sample_latents(labels, gen, self.cfg, eps_fn=lambda *a: self._timed("diffusion", self.eps, *a))
            img = self._timed("decoder", self.model.tokenizer.decode, lat)
        return img, {"steps": 0.0, "diffusion": self.seconds["diffusion"], "decoder": self.seconds["decoder"]}, None


def hart_info(model: HartModel, cfg: float) -> dict:
    macs = generation_macs(model)
    k = 2 if resolve_guidance(model.cfg.guidance_distilled, cfg) else 1
    return {"params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("tokenizer.")),
            "macs": k * (macs["transformer"] + macs["diffusion"]) + macs["decoder"],
            "steps": f"{len(model.transformer.patch_nums)} AR + {model.cfg.diffusion.sample_steps} diff"}


def dit_info(model: DiT, cfg: float) -> dict:
    gen = torch.Generator().manual_seed(0)
    macs = _macs(lambda: model.tokenizer.decode(model.sample_latents(torch.zeros(1, dtype=torch.long), gen, cfg)))
    return {"params": sum(p.numel() for p in model.generator_parameters()), "macs": macs,
            "steps": f"{model.cfg.sample_steps} DDIM"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--baseline", required=True)
    p.add_argument("--pte", default="", help="the student's .pte artifact folder (exported if missing); '' = skip")
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--grid-seeds", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--out", default="runs/hart/proof")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    load_start = os.getloadavg()
    settings = SamplerSettings(cfg=a.cfg)
    teacher, student, dit = load_folder(a.teacher).eval(), load_folder(a.student).eval(), load_dit(a.baseline)
    if student.cfg.tokenizer != teacher.cfg.tokenizer or dit.cfg.hart_config().tokenizer != teacher.cfg.tokenizer:
        raise SystemExit("error: the three generators must share the teacher's tokenizer config")
    gens = {"teacher": HartGen(TimedEager(teacher), teacher, settings),
            "student": HartGen(TimedEager(student), student, settings), "baseline": DiTGen(dit, a.cfg)}
    info = {"teacher": hart_info(teacher, a.cfg), "student": hart_info(student, a.cfg), "baseline": dit_info(dit, a.cfg)}
    names = {"teacher": a.teacher, "student": a.student, "baseline": f"{a.baseline} ({dit.cfg.name})"}
    if a.pte:
        from edgevit.hart.artifacts import load_hart_artifacts

        if not Path(a.pte).is_dir():
            from edgevit.hart.export import export_hart

            print(f"exporting the student to {a.pte} (pte fp32)", flush=True)
            export_hart(student, "pte", a.pte, settings=settings, threads=a.threads)
        arts = load_hart_artifacts(a.pte, a.threads)
        gens["student .pte"] = HartGen(arts.programs, arts.model, settings)
        info["student .pte"], names["student .pte"] = info["student"], f"{a.pte} (pte fp32)"
    classes = teacher.cfg.transformer.num_classes

    print(f"latency: {a.runs} interleaved rounds + 1 warm-up, threads {a.threads}", flush=True)
    times: dict[str, list[dict]] = {k: [] for k in gens}
    for r in range(a.runs + 1):
        for key, gen in gens.items():
            t0 = time.perf_counter()
            _, st, _ = gen(r % classes, 1000 + r)
            total = time.perf_counter() - t0
            if r:
                times[key].append({"total": total, **st})
    lat = {k: {s: statistics.median(row[s] for row in v) for s in v[0]} for k, v in times.items()}

    print(f"quality: {a.per_class} images per class x {classes} classes per model", flush=True)
    images: dict[str, torch.Tensor] = {}
    tokens: dict[str, list] = {}
    for key in ("teacher", "student", "baseline"):
        outs = [gens[key](label, k) for label in range(classes) for k in range(a.per_class)]
        images[key] = torch.cat([o[0] for o in outs])
        tokens[key] = [o[2] for o in outs]
        print(f"  {key} done", flush=True)
    real, _ = photo_crops(teacher.cfg.image_size, "heldout", a.per_class)
    train, _ = photo_crops(teacher.cfg.image_size, "train", a.per_class)
    quality = {k: {e: feature_distance(v, real, e) for e in EXTRACTORS} for k, v in images.items()}
    quality["real (train crops)"] = {e: feature_distance(train, real, e) for e in EXTRACTORS}

    grid_idx = [c * a.per_class + s for c in range(classes) for s in range(a.grid_seeds)]
    rows = [real[grid_idx], images["teacher"][grid_idx], images["student"][grid_idx]]
    pte_check = None
    if "student .pte" in gens:
        pte_imgs, same, worst = [], True, 0.0
        for i in grid_idx:
            img, _, tok = gens["student .pte"](i // a.per_class, i % a.per_class)
            pte_imgs.append(img)
            same &= all(torch.equal(x, y) for x, y in zip(tok, tokens["student"][i], strict=True))
            worst = max(worst, float((img - images["student"][i:i + 1]).abs().max()))
        rows.append(torch.cat(pte_imgs))
        pte_check = {"images": len(grid_idx), "tokens_equal": same, "max_abs_pixel_diff": worst}
    rows.append(images["baseline"][grid_idx])
    out.mkdir(parents=True, exist_ok=True)
    write_png(out / "grid.png", image_grid(torch.cat(rows), len(grid_idx)))
    load_end = os.getloadavg()

    lines = [f"one image per call, batch 1, CFG {a.cfg}, threads {a.threads}, median of {a.runs} interleaved rounds; "
             f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end; quality: Fréchet distance, "
             f"{a.per_class * classes} images vs {len(real)} held-out crops (lower is better)", "",
             "| model | checkpoint | gen params | MACs/image | steps | total ms | AR steps ms | diffusion ms | decode ms "
             "| host ms | images/s | FD random-cnn | FD thumbnail |", "|" + "---|" * 13]
    for key in gens:
        m, i = lat[key], info[key]
        ms = {s: 1e3 * v for s, v in m.items()}
        host = ms["total"] - ms["steps"] - ms["diffusion"] - ms["decoder"]
        q = quality.get(key, {})
        fd = " | ".join(f"{q[e]:.3f}" if e in q else "(= student)" for e in EXTRACTORS)
        lines.append(f"| {key} | {names[key]} | {i['params'] / 1e6:.2f}M | {i['macs'] / 1e9:.3f}G | {i['steps']} | "
                     f"{ms['total']:.1f} | {ms['steps']:.1f} | {ms['diffusion']:.1f} | {ms['decoder']:.1f} | {host:.1f} "
                     f"| {1 / m['total']:.2f} | {fd} |")
    rr = quality["real (train crops)"]
    lines.append(f"| real vs real | held-out vs train crops | | | | | | | | | | {rr['random-cnn']:.3f} | {rr['thumbnail']:.3f} |")
    speed_t = lat["teacher"]["total"] / lat["student"]["total"]
    speed_b = lat["baseline"]["total"] / lat["student"]["total"]
    qs, qt, qb = (quality[k]["random-cnn"] for k in ("student", "teacher", "baseline"))
    targets = {
        "student >= 3x faster than teacher": (speed_t >= 3, f"{speed_t:.2f}x"),
        "student FD within 15% of teacher (random-cnn)": (qs <= 1.15 * qt, f"{qs:.3f} vs {qt:.3f} ({qs / qt - 1:+.0%})"),
        "student >= 4.5x baseline images/s": (speed_b >= 4.5, f"{speed_b:.2f}x"),
        "student FD <= baseline FD (random-cnn)": (qs <= qb, f"{qs:.3f} vs {qb:.3f}"),
    }
    if pte_check:
        targets[".pte images match eager (same seeds)"] = (
            pte_check["tokens_equal"] and pte_check["max_abs_pixel_diff"] < 1e-3,
            f"tokens equal: {pte_check['tokens_equal']}, max |pixel diff| {pte_check['max_abs_pixel_diff']:.2e} "
            f"over {pte_check['images']} images")
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {k} | {'yes' if ok else 'NO'} | {v} |" for k, (ok, v) in targets.items()]
    text = "\n".join(lines)
    print(text)
    write_text(out / "proof.md", text + "\n")
    write_json(out / "proof.json", {"latency_s": lat, "info": info, "quality": quality, "pte_check": pte_check,
                                    "targets": {k: {"met": ok, "measured": v} for k, (ok, v) in targets.items()},
                                    "load_average": [load_start, load_end], "args": vars(a)})
    print(f"wrote {out / 'grid.png'}, {out / 'proof.md'}, {out / 'proof.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
