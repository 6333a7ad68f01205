"""Exported HART generation: the artifact folder layout, its loader, and :class:`ArtifactPrograms` — the
sampler's :class:`~edgevit.hart.sampler.Programs` over runners, so the same host loop drives eager and
exported programs.

Folder layout (written by :func:`edgevit.hart.export.export_hart`)::

    manifest.json       kind, model config, GenContract, sampler defaults, components (path, sha256, I/O),
                        host tensors (sha256), fidelity vs eager fp32, tool versions
    step_<k>/           one scale of the transformer (k = 0 .. S-1), KV cache in and out; own manifest.json
    diffusion/          one denoising call of the residual MLP; own manifest.json
    decoder/            tokenizer decoder, latent -> image in [-1, 1]; own manifest.json
    host.safetensors    the small tensors the host loop needs (class / level / word embeddings,
                        codebook, residual convs of the quantizer, decoder_norm)

Every program has static shapes: the step programs and the diffusion program run at the exported batch
(2 rows per image under classifier-free guidance); fewer rows are padded by repeating the last one.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EdgevitError
from ..manifest import MANIFEST_NAME, read_folder_manifest, verify_component
from .configs import DiffusionConfig, HartConfig, TokenizerConfig, TransformerConfig
from .model import HartModel
from .sampler import EagerPrograms, SamplerSettings

KIND = "edgevit-hart-artifacts"
TOP_VERSION = 1
HOST_FILE = "host.safetensors"
# State-dict prefixes the host loop needs (everything else lives in the three programs).
HOST_PREFIXES = ("transformer.class_embed.", "transformer.context_norm.", "transformer.context_embed.",
                 "transformer.lvl_embed.", "transformer.word_embed.", "transformer.decoder_norm.",
                 "tokenizer.quantize.")


def host_state(model: HartModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k.startswith(HOST_PREFIXES)}


def config_from_dict(data: dict[str, Any]) -> HartConfig:
    """Inverse of ``HartConfig.to_dict()`` (lists become tuples again)."""
    def build(cls, d):
        return cls(**{f.name: tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name]
                      for f in fields(cls) if f.name in d})
    try:
        return HartConfig(name=data["name"], image_size=int(data["image_size"]),
                          tokenizer=build(TokenizerConfig, data["tokenizer"]),
                          transformer=build(TransformerConfig, data["transformer"]),
                          diffusion=build(DiffusionConfig, data["diffusion"]), notes=data.get("notes", ""),
                          guidance_distilled=float(data.get("guidance_distilled", 0.0)))
    except (KeyError, TypeError) as exc:
        raise EdgevitError(f"HART config in manifest is incomplete ({exc!r}); re-export") from None


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if x.shape[0] == rows:
        return np.ascontiguousarray(x)
    if x.shape[0] > rows:
        raise EdgevitError(f"HART artifact: {x.shape[0]} rows exceed the exported batch of {rows}; "
                           "generate fewer images per call or re-export with a larger batch")
    return np.ascontiguousarray(np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)]))


class ArtifactPrograms:
    """:class:`Programs` whose transformer steps, diffusion MLP and decoder are runners
    (``run({name: array}) -> {name: array}``); the host pieces come from ``host`` (a :class:`HartModel`
    whose host tensors are loaded; its other weights are unused).

    ``runners``: ``step_0`` .. ``step_{S-1}``, ``diffusion``, ``decoder``. ``batch``: rows of the step
    programs; ``starts``: the cache offset each step program was exported at."""

    def __init__(self, host: HartModel, runners: dict[str, Any], batch: int, starts: list[int]):
        eager = EagerPrograms(host)  # host pieces only; step, residual and decode are the runners'
        self.model, self.patch_nums = host, eager.patch_nums
        self.guidance_distilled = eager.guidance_distilled
        self.prefix_inputs, self.scale_inputs, self.code_vectors = eager.prefix_inputs, eager.scale_inputs, eager.code_vectors
        self.upsample_scale, self.next_input = eager.upsample_scale, eager.next_input
        self.diffusion_condition = eager.diffusion_condition
        self.runners, self.batch, self.starts = runners, batch, list(starts)
        t = host.transformer
        self.cache_shape = (len(t.blocks), 2, batch, t.cfg.num_heads, t.seq_len, t.head_dim)
        self.diffusion_rows = batch * self.patch_nums[-1] ** 2
        self.seconds: dict[str, float] = {}

    def _run(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import time

        t0 = time.perf_counter()
        out = self.runners[name].run(inputs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return out

    def empty_cache(self, batch: int) -> torch.Tensor:
        if batch > self.batch:
            raise EdgevitError(f"HART artifact: batch {batch} exceeds the exported batch {self.batch}")
        return torch.zeros(self.cache_shape)

    def step(self, x, pooled, pooled_head, cos, sin, cache, start: int):
        n, cap = x.shape[1], self.cache_shape[-2]
        if start + n > cap:
            raise EdgevitError(f"KV cache overflow: {start} cached + {n} new tokens > capacity {cap}")
        if start not in self.starts:
            raise EdgevitError(f"HART artifact: no step program at cache offset {start} (exported: {self.starts})")
        si, b = self.starts.index(start), x.shape[0]
        arrays = {"x": x, "pooled": pooled, "pooled_head": pooled_head, "cos": cos, "sin": sin}
        inputs = {k: _pad_rows(v.detach().float().numpy(), self.batch) for k, v in arrays.items()}
        inputs["cache"] = np.ascontiguousarray(cache.numpy(), dtype=np.float32)
        out = self._run(f"step_{si}", inputs)
        return (torch.from_numpy(out["hidden"][:b]), torch.from_numpy(out["logits"][:b]),
                torch.from_numpy(out["new_cache"]))

    def _diffusion_net(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        inputs = {"x": _pad_rows(x.float().numpy(), self.diffusion_rows),
                  "t": _pad_rows(t.float().numpy(), self.diffusion_rows),
                  "c": _pad_rows(c.float().numpy(), self.diffusion_rows)}
        return torch.from_numpy(self._run("diffusion", inputs)["out"][:n])

    def residual(self, z, guidance, generator, temperature):
        return self.model.diffusion.sample(z, guidance, generator, temperature, net=self._diffusion_net)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        rows = [torch.from_numpy(self._run("decoder", {"latent": np.ascontiguousarray(latent[i:i + 1].numpy())})["image"])
                for i in range(latent.shape[0])]
        return torch.cat(rows)


class HartArtifacts:
    """A loaded artifact folder: ``programs`` (:class:`ArtifactPrograms`), ``model`` (host pieces),
    ``manifest`` (top-level dict), ``settings`` (the sampler defaults it was gated with)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], programs: ArtifactPrograms):
        self.folder, self.manifest, self.programs = folder, manifest, programs
        self.model = programs.model
        s = manifest.get("sampler", {})
        self.settings = SamplerSettings(cfg=float(s.get("cfg", 0.0)), top_k=s.get("top_k", 0),
                                        top_p=float(s.get("top_p", 0.0)), temperature=float(s.get("temperature", 1.0)))


def component_names(n_scales: int) -> list[str]:
    return [f"step_{k}" for k in range(n_scales)] + ["diffusion", "decoder"]


def read_top_manifest(folder: str | Path) -> dict[str, Any]:
    return read_folder_manifest(folder, KIND, TOP_VERSION, "HART artifact", "edgevit export-hart")


def load_hart_artifacts(folder: str | Path, threads: int | None = None) -> HartArtifacts:
    """Load a folder written by :func:`edgevit.hart.export.export_hart` (every sha256 checked)."""
    from safetensors.torch import load_file

    from ..runtime.base import load_artifact

    folder = Path(folder)
    top = read_top_manifest(folder)
    cfg = config_from_dict(top.get("config", {}))
    comps = top.get("components", {})
    runners = {}
    for name in component_names(len(cfg.tokenizer.patch_nums)):
        comp = comps.get(name)
        if not comp:
            raise EdgevitError(f"{folder / MANIFEST_NAME}: component {name!r} missing; re-export")
        verify_component(folder, comp["artifact"], comp["sha256"], f"{name} artifact")
        runners[name] = load_artifact(folder / comp["path"], threads)
    host_path = verify_component(folder, HOST_FILE, top.get("host", {}).get("sha256", ""), "host tensors")
    model = HartModel(cfg).eval()
    state = load_file(str(host_path))
    expected = host_state(model)
    if sorted(state) != sorted(expected):
        raise EdgevitError(f"{host_path}: host tensors do not match config {cfg.name!r}; re-export the folder")
    model.load_state_dict(state, strict=False)
    programs = ArtifactPrograms(model, runners, int(top["batch"]), [int(s) for s in top["starts"]])
    return HartArtifacts(folder, top, programs)
