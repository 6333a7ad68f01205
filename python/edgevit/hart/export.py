"""``export_hart``: a HART model → static-shape programs (one per transformer scale, the residual-diffusion
MLP step, the tokenizer decoder) for one format, in the folder layout of :mod:`edgevit.hart.artifacts`.

Steps: wrap each program as a tensor-only module (:class:`~edgevit.hart.transformer.ScaleStep` at the
scale's fixed cache offset, :class:`DiffusionStep`, :class:`Decode`); lower them with the backend; load
them back and drive them with the same host loop as the eager model (:class:`ArtifactPrograms`); compare
tokens and images with eager fp32 for the same seeds (:func:`measure`); gate; write everything into a
temporary folder next to ``out`` and rename it into place.

Precision: the transformer steps stay fp32 (int8 logits would change the sampled tokens); ``precision``
applies to the diffusion MLP and the decoder, which do not feed back into the token sampling, so the
gate can demand identical tokens at every precision and bound the image error by PSNR. int8 calibrates
on the inputs those programs see while the eager model generates (seeds disjoint from the gate's), and its
gate adds the quality proxy (:class:`QualityProxy`): the random-CNN Fréchet distance of the artifact's samples
may exceed eager fp32's by at most 5%.
"""

from __future__ import annotations

import copy
import gc
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import io
from ..errors import EdgevitError
from ..export import _replace_dir, _tool_versions
from ..lowering.base import ExportRequest, IOSpec, get_backend
from ..manifest import MANIFEST_NAME, Manifest, sha256_file, write_manifest
from .artifacts import HOST_FILE, KIND, TOP_VERSION, ArtifactPrograms, component_names, host_state
from .contract import GenContract
from .model import HartModel
from .sampler import EagerPrograms, Generated, Programs, SamplerSettings, generate, resolve_guidance
from .transformer import Condition, ScaleStep

GATE_SEEDS = (0, 1)
CALIB_SEEDS = (100, 101, 102, 103)
# Kept float in int8 programs: the timestep embedder sees t in [0, 999]; one int8 scale for it (step ~4) and
# for its sinusoids wrecks the embedding (ε SQNR 3-9 dB on the trained teacher-small, 23-28 dB with it float).
KEEP_FLOAT = {"diffusion": ("net.time_embed",)}
PSNR_CAP = 100.0  # dB reported for identical images


class DiffusionStep(nn.Module):
    """One call of the residual MLP: x N×Cz, t N float32 (original step index), c N×C -> N×2Cz."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, c)


class NearestUpsample2x(nn.Module):
    """The decoder's ``conv(nearest 2× upsample(x))`` with the upsample as expand + reshape (exact): LiteRT
    refuses resize ops in our graphs (they signal a substituted bicubic), and this form has none."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x[..., None].expand(n, c, h, w, 2).reshape(n, c, h, 2 * w)
        x = x[:, :, :, None].expand(n, c, h, 2, 2 * w).reshape(n, c, 2 * h, 2 * w)
        return self.conv(x)


class Decode(nn.Module):
    """Tokenizer decoder: latent B×Cz×P×P -> image B×3×H×W in [-1, 1] (a copy of the tokenizer with its
    nearest upsamples as :class:`NearestUpsample2x`)."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        from .tokenizer import Upsample

        self.tokenizer = copy.deepcopy(tokenizer)
        for name, module in list(self.tokenizer.named_modules()):
            if isinstance(module, Upsample):
                parent, _, leaf = name.rpartition(".")
                setattr(self.tokenizer.get_submodule(parent) if parent else self.tokenizer, leaf,
                        NearestUpsample2x(module.conv))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(latent)


@dataclass
class GenFidelity:
    """Artifact vs eager fp32 over ``images`` generations: fraction of equal tokens (all scales), image PSNR
    (dB, [-1, 1] range; min over images, capped at 100) and max absolute pixel difference."""

    images: int
    token_agreement: float
    psnr_min_db: float
    max_abs_diff: float
    quality_ratio: float | None = None  # quality proxy artifact / eager fp32 (int8 only; :class:`QualityProxy`)

    def summary(self) -> str:
        q = "" if self.quality_ratio is None else f", quality proxy {self.quality_ratio:.3f}x eager fp32's"
        return (f"tokens {100 * self.token_agreement:.2f}% equal, image PSNR >= {self.psnr_min_db:.1f} dB, "
                f"max |diff| {self.max_abs_diff:.2e} over {self.images} images{q}")


@dataclass(frozen=True)
class GenGate:
    """Budget: every token equal, image PSNR vs eager fp32 of at least ``min_psnr_db``."""

    min_token_agreement: float = 1.0
    min_psnr_db: float = 40.0
    max_quality_ratio: float = 1.05  # applies when the fidelity carries a quality ratio (int8)

    def failures(self, fid: GenFidelity) -> list[str]:
        out = []
        if fid.token_agreement < self.min_token_agreement:
            out.append(f"token agreement {100 * fid.token_agreement:.2f}% < {100 * self.min_token_agreement:.2f}%")
        if fid.psnr_min_db < self.min_psnr_db:
            out.append(f"image PSNR {fid.psnr_min_db:.1f} dB < {self.min_psnr_db:.1f} dB")
        if fid.quality_ratio is not None and fid.quality_ratio > self.max_quality_ratio:
            out.append(f"quality proxy {fid.quality_ratio:.3f}x eager fp32's > {self.max_quality_ratio:.2f}x")
        return out


def default_gate(precision: str) -> GenGate:
    return GenGate(min_psnr_db=40.0 if precision == "fp32" else 25.0)


GATE_CONTEXT_SEED = 7000  # text-conditioned models: gate "label" i is the seeded random context of seed 7000 + i


def gate_conditions(model: HartModel, label: int) -> tuple[Condition, Condition]:
    """(cond, uncond) for gate/calibration input ``label``: the class and the null label for class-conditional
    models; for text-conditioned ones a seeded N(0, 1) context (1×K×D) and the all-zero context, so an export
    needs no text encoder (the gate compares artifact and eager on the same inputs, any inputs will do)."""
    t = model.transformer
    if t.cfg.num_classes > 0:
        return t.condition_from_labels(torch.tensor([label])), t.condition_from_labels(t.null_labels(1))
    g = torch.Generator().manual_seed(GATE_CONTEXT_SEED + label)
    ctx = torch.randn(1, t.prefix_len, t.cfg.context_dim, generator=g)
    return t.condition_from_context(ctx), t.condition_from_context(torch.zeros_like(ctx))


def generate_one(programs: Programs, model: HartModel, label: int, seed: int, settings: SamplerSettings) -> Generated:
    """One image of gate input ``label`` (:func:`gate_conditions`) with ``programs`` (host pieces from
    ``model``), seeded."""
    cond, uncond = gate_conditions(model, label)
    return generate(programs, cond, uncond, settings, torch.Generator().manual_seed(seed))


QUALITY_SEEDS = range(100, 108)  # candidate and eager fp32 samples (per label)
QUALITY_REFERENCE_SEEDS = range(200, 208)  # the eager fp32 reference set (per label)


class QualityProxy:
    """Quality proxy of candidate programs relative to eager ``reference``: random-CNN Fréchet distance
    (:mod:`edgevit.hart.quality`) of the candidate's samples over that of the reference's samples for the
    same seeds, both against a reference set of eager fp32 samples with disjoint seeds (the export has no
    real images; the proxy asks whether the artifact's samples sit as close to the model's own distribution
    as eager fp32's do). 8 images per label. The eager side is generated once, here; :meth:`ratio` samples
    only the candidate (an export measures several candidates). > 1 means the candidate's samples drifted."""

    def __init__(self, reference: Programs, model: HartModel, settings: SamplerSettings, labels: list[int]):
        from .quality import extractor_fn

        self.model, self.settings, self.labels = model, settings, list(labels)
        self.features = extractor_fn("random-cnn")
        self.reference = self.features(self._images(reference, QUALITY_REFERENCE_SEEDS))
        self.base = self._distance(reference)

    def _images(self, programs: Programs, seeds) -> torch.Tensor:
        return torch.cat([generate_one(programs, self.model, label, seed, self.settings).images
                          for label in self.labels for seed in seeds])

    def _distance(self, programs: Programs) -> float:
        from .quality import frechet_distance

        return frechet_distance(self.features(self._images(programs, QUALITY_SEEDS)), self.reference)

    def ratio(self, candidate: Programs) -> float:
        return self._distance(candidate) / max(self.base, 1e-12)


def quality_ratio(reference: Programs, candidate: Programs, model: HartModel, settings: SamplerSettings,
                  labels: list[int]) -> float:
    """:meth:`QualityProxy.ratio` of ``candidate`` against ``reference`` (one-off)."""
    return QualityProxy(reference, model, settings, labels).ratio(candidate)


def measure(reference: Programs, candidate: Programs, model: HartModel, settings: SamplerSettings,
            labels: list[int], seeds: tuple[int, ...] = GATE_SEEDS,
            quality: QualityProxy | None = None) -> GenFidelity:
    """Tokens and images of ``candidate`` vs ``reference`` for the same seeds; with ``quality`` also its
    :meth:`QualityProxy.ratio`."""
    same = total = 0
    psnrs, worst = [], 0.0
    for seed in seeds:
        for label in labels:
            a = generate_one(reference, model, label, seed, settings)
            b = generate_one(candidate, model, label, seed, settings)
            for ta, tb in zip(a.tokens, b.tokens, strict=True):
                same += int((ta == tb).sum())
                total += ta.numel()
            mse = float((a.images - b.images).pow(2).mean())
            psnrs.append(PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * float(np.log10(4.0 / mse))))
            worst = max(worst, float((a.images - b.images).abs().max()))
    ratio = quality.ratio(candidate) if quality is not None else None
    return GenFidelity(len(psnrs), same / total, min(psnrs), worst, ratio)


def _io(specs, dims: dict[str, int]) -> list[dict[str, Any]]:
    return [{"name": s.name, "shape": [dims[d] if isinstance(d, str) else d for d in s.shape], "dtype": s.dtype,
             "layout": s.layout} for s in specs]


def program_specs(contract: GenContract, batch: int) -> dict[str, tuple[list[dict], list[dict]]]:
    """Concrete I/O (manifest dicts) of every program at ``batch`` step rows (2 per image under CFG)."""
    progs = contract.programs()
    out = {}
    for si, pn in enumerate(contract.patch_nums):
        dims = {"B": batch, "l": contract.prefix_len if si == 0 else pn * pn}
        out[f"step_{si}"] = (_io(progs["step"]["inputs"], dims), _io(progs["step"]["outputs"], dims))
    dims = {"N": batch * contract.patch_nums[-1] ** 2, "B": 1}
    for name in ("diffusion", "decoder"):
        out[name] = (_io(progs[name]["inputs"], dims), _io(progs[name]["outputs"], dims))
    return out


def step_starts(contract: GenContract) -> list[int]:
    starts, pos = [], 0
    for si, pn in enumerate(contract.patch_nums):
        starts.append(pos)
        pos += contract.prefix_len if si == 0 else pn * pn
    return starts


class _Recorder(EagerPrograms):
    """Eager programs that record the diffusion and decoder inputs (int8 calibration samples)."""

    def __init__(self, model: HartModel):
        super().__init__(model)
        self.diffusion_inputs: list[tuple[np.ndarray, ...]] = []
        self.decoder_inputs: list[tuple[np.ndarray, ...]] = []
        self.decode = self._decode  # EagerPrograms binds decode per instance

    def residual(self, z, guidance, generator, temperature):
        def net(x, t, c):
            self.diffusion_inputs.append((x.numpy().copy(), t.float().numpy().copy(), c.numpy().copy()))
            return self.model.diffusion.net(x, t, c)
        return self.model.diffusion.sample(z, guidance, generator, temperature, net=net)

    def _decode(self, latent):
        self.decoder_inputs.append((latent.numpy().copy(),))
        return self.model.tokenizer.decode(latent)


def _calibration(model: HartModel, settings: SamplerSettings, labels: list[int]) -> dict[str, list]:
    rec = _Recorder(model)
    for seed in CALIB_SEEDS:
        for label in labels:
            generate_one(rec, model, label, seed, settings)
    return {"diffusion": rec.diffusion_inputs, "decoder": rec.decoder_inputs}


def _lower_one(backend, module: nn.Module, ins, outs, precision: str, path: Path, calib,
               keep_float: tuple[str, ...] = ()) -> Any:
    request = ExportRequest.multi(module, [IOSpec.from_dict(d) for d in ins], [d["name"] for d in outs], precision,
                                  path, calib if precision == "int8" else None, keep_float if precision == "int8" else ())
    return backend.export(request)


def resolve_model(model: HartModel | str | Path) -> tuple[HartModel, str | None]:
    """A HartModel, or a checkpoint folder (upstream layout, loaded strictly)."""
    if isinstance(model, HartModel):
        return model.eval(), None
    from .checkpoint import load_folder

    return load_folder(model).eval(), str(model)


def export_hart(model: HartModel | str | Path, format: str, out: str | Path, precision: str = "fp32",
                settings: SamplerSettings = SamplerSettings(cfg=1.5), gate: GenGate | str | None = "default",
                labels: list[int] | None = None, threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Export ``model`` (a :class:`HartModel` or a checkpoint folder) to ``format`` (pte | tflite | onnx) into
    the folder ``out``; ``precision`` (fp32 | int8) applies to the diffusion MLP and the decoder. ``settings``:
    the sampler defaults stored in the manifest and used by the gate (CFG on -> 2 step rows per image).
    ``labels``: gate inputs (:func:`gate_conditions`: classes, or seeded contexts of a text-conditioned model;
    default: up to 4). Returns the top-level manifest."""
    backend = get_backend(format)
    if precision not in ("fp32", "int8") or precision not in backend.precisions:
        raise EdgevitError(f"{format}: HART precision {precision!r} is not supported; choose fp32 or int8")
    model, weights = resolve_model(model)
    cfg = model.cfg
    gate = default_gate(precision) if gate == "default" else gate
    n_inputs = cfg.transformer.num_classes if cfg.transformer.num_classes > 0 else 4
    labels = list(range(min(4, n_inputs))) if labels is None else list(labels)
    contract = GenContract.from_config(cfg)
    batch = 2 if resolve_guidance(cfg.guidance_distilled, settings.cfg) != 0 else 1
    specs, starts = program_specs(contract, batch), step_starts(contract)
    modules: dict[str, nn.Module] = {f"step_{si}": ScaleStep(model.transformer, s) for si, s in enumerate(starts)}
    modules["diffusion"], modules["decoder"] = DiffusionStep(model.diffusion.net), Decode(model.tokenizer)
    for module in modules.values():
        module.eval()
    calib = _calibration(model, settings, labels) if precision == "int8" else {}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))

    def lower(name: str, prec: str, folder: Path) -> tuple[Any, str, Any]:
        path = folder / f"model{backend.extension}"
        path.parent.mkdir(exist_ok=True)
        if progress:
            print(f"export-hart: lowering {name} ({format}/{prec})", flush=True)
        ins, outs = specs[name]
        try:
            result = _lower_one(backend, modules[name], ins, outs, prec, path, calib.get(name), KEEP_FLOAT.get(name, ()))
        except EdgevitError as exc:
            if prec != "int8":
                raise
            if progress:
                print(f"export-hart: {name} int8 failed to lower ({exc}); keeping it fp32", flush=True)
            prec = "fp32"
            result = _lower_one(backend, modules[name], ins, outs, prec, path, None)
            result.notes.append(f"int8 requested but its lowering failed ({exc}); this program is fp32")
        runner = backend.load(path, Manifest(cfg.name, format, prec, path.name, "", 0, ins, outs,
                                             contract.to_dict(), {}), threads)
        return result, prec, runner

    budget = gate or default_gate(precision)
    try:
        results, runners = {}, {}
        for name in component_names(len(contract.patch_nums)):
            result, prec, runners[name] = lower(name, precision if name in ("diffusion", "decoder") else "fp32",
                                                tmp / name)
            results[name] = (result, prec)
        quality = QualityProxy(EagerPrograms(model), model, settings, labels) if precision == "int8" else None
        fid = measure(EagerPrograms(model), ArtifactPrograms(model, runners, batch, starts), model, settings, labels,
                      quality=quality)
        failures = budget.failures(fid)
        if progress:
            print(f"export-hart: {fid.summary()}", flush=True)
        # int8 where it keeps fidelity: revert int8 programs to fp32 (one, then both) until the budget holds.
        quantized = [n for n in ("diffusion", "decoder") if results[n][1] == "int8"]
        fallbacks = [[n] for n in reversed(quantized)] + ([quantized] if len(quantized) > 1 else [])
        alt: dict[str, tuple[Any, str, Any]] = {}
        for revert in fallbacks if failures and gate is not None else []:
            for n in revert:
                alt.setdefault(n, lower(n, "fp32", tmp / f".{n}-fp32"))
            trial = {**runners, **{n: alt[n][2] for n in revert}}
            fid2 = measure(EagerPrograms(model), ArtifactPrograms(model, trial, batch, starts), model, settings,
                           labels, quality=quality)
            if progress:
                print(f"export-hart: with {', '.join(revert)} fp32: {fid2.summary()}", flush=True)
            if not budget.failures(fid2):
                fid, failures = fid2, []
                for n in revert:
                    note = f"int8 missed the budget ({fid.summary()}); this program is fp32"
                    alt[n][0].notes.append(note)
                    results[n] = (alt[n][0], "fp32")
                    shutil.rmtree(tmp / n)
                    (tmp / f".{n}-fp32").rename(tmp / n)
                break
        runners.clear()
        alt.clear()
        gc.collect()
        for n in ("diffusion", "decoder"):
            shutil.rmtree(tmp / f".{n}-fp32", ignore_errors=True)
        if failures and gate is not None:
            raise EdgevitError(f"{cfg.name} {format}/{precision}: misses its fidelity budget vs eager fp32 "
                               f"({'; '.join(failures)}); use gate=None (--no-gate) to write it anyway")
        top = _write_folder(tmp, model, format, precision, contract, settings, batch, starts, specs, results, fid,
                            budget, failures, labels, weights)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return top


def _write_folder(tmp: Path, model: HartModel, format, precision, contract: GenContract, settings, batch, starts,
                  specs, results, fid: GenFidelity, gate: GenGate, failures, labels, weights) -> dict[str, Any]:
    from safetensors.torch import save_file

    verdict = "passed" if not failures else "failed, written with --no-gate: " + "; ".join(failures)
    components: dict[str, Any] = {}
    for name, (result, prec) in results.items():
        path = tmp / name / f"model{get_backend(format).extension}"
        quant = result.quantization if prec == "int8" else None
        calib = {"source": f"inputs of this program during eager generation, seeds {list(CALIB_SEEDS)}, "
                           f"classes {labels}"} if prec == "int8" else None
        manifest = Manifest(model_id=model.cfg.name, format=format, precision=prec, artifact=path.name,
                            sha256=sha256_file(path), size_bytes=path.stat().st_size, inputs=specs[name][0],
                            outputs=specs[name][1], contract={**contract.to_dict(), "component": name},
                            tool_versions=_tool_versions(result), calibration=calib, quantization=quant,
                            delegation=result.delegation,
                            fidelity={"measured_as": "the whole sampler, see ../manifest.json", "gate_result": verdict},
                            weights=weights)
        write_manifest(manifest, path.parent)
        components[name] = {"path": name, "artifact": f"{name}/{path.name}", "sha256": manifest.sha256,
                            "size_bytes": manifest.size_bytes, "precision": prec, "inputs": specs[name][0],
                            "outputs": specs[name][1], "delegation": result.delegation, "notes": result.notes}
    save_file(host_state(model), str(tmp / HOST_FILE))
    first = next(iter(results.values()))[0]
    top = {
        "kind": KIND, "version": TOP_VERSION, "model_id": model.cfg.name, "task": contract.task, "format": format,
        "precision": precision, "config": model.cfg.to_dict(), "contract": contract.to_dict(),
        "sampler": asdict(settings) | {"top_k": settings.top_k if isinstance(settings.top_k, int) else list(settings.top_k)},
        "batch": batch, "starts": starts, "components": components,
        "host": {"file": HOST_FILE, "sha256": sha256_file(tmp / HOST_FILE),
                 "holds": "class/level/word embeddings, codebook, quantizer residual convs, decoder_norm"},
        "fidelity": {**asdict(fid), "summary": fid.summary(), "reference": "eager PyTorch fp32, same host loop and seeds",
                     "labels": labels, "seeds": list(GATE_SEEDS), "gate": asdict(gate), "gate_result": verdict},
        "tool_versions": _tool_versions(first), "weights": weights,
    }
    io.write_json(tmp / MANIFEST_NAME, top)
    return top


__all__ = ["export_hart", "measure", "QualityProxy", "quality_ratio", "GenFidelity", "GenGate", "DiffusionStep", "Decode"]
