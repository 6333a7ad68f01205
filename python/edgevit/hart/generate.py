"""``edgevit generate``: images of a class (``--class``) or a prompt (``--prompt`` with ``--text-encoder``, for
text-conditioned models) from exported HART programs (``--artifacts``) or an eager checkpoint folder
(``--model``), one PNG per image. Image i uses seed ``seed + i``; the same seed gives the same tokens with
either source (the artifact gate checks exactly that)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .. import processing
from ..errors import EdgevitError
from ..io import write_png
from .sampler import EagerPrograms, SamplerSettings


def generate_images(out: str | Path, label: int | None = None, artifacts: str | Path | None = None,
                    model: str | Path | None = None, seed: int = 0, count: int = 1, cfg: float | None = None,
                    threads: int | None = None, progress: bool = False, prompt: str | None = None,
                    text_encoder: str | None = None) -> list[Path]:
    """Write ``count`` images of class ``label`` (``class<label>_seed<s>.png``) or of ``prompt``
    (``prompt_<slug>_seed<s>.png``, embedded by ``text_encoder``, a spec of :func:`edgevit.hart.text.load_text_encoder`)
    into ``out`` (uint8 RGB).

    Exactly one of ``artifacts`` (a folder from ``export_hart``) or ``model`` (a checkpoint folder in the
    upstream layout, run eagerly) is required, and exactly one of ``label`` or ``prompt``. ``cfg``: guidance
    scale (default: the artifacts' exported setting, 1.5 for eager models). Returns the written paths."""
    import torch

    from .sampler import generate

    if (label is None) == (prompt is None):
        raise EdgevitError("generate: pass exactly one of --class N or --prompt TEXT")
    if prompt is not None and not text_encoder:
        raise EdgevitError("generate: --prompt needs --text-encoder KIND:PATH (e.g. hf:/models/qwen2)")
    if (artifacts is None) == (model is None):
        raise EdgevitError("generate: pass exactly one of --artifacts DIR or --model CHECKPOINT_DIR")
    if count < 1:
        raise EdgevitError(f"generate: --count must be >= 1, got {count}")
    if artifacts is not None:
        from .artifacts import load_hart_artifacts

        loaded = load_hart_artifacts(artifacts, threads)
        host, programs, settings = loaded.model, loaded.programs, loaded.settings
        if cfg not in (None, 0.0) and programs.batch < 2 and not programs.guidance_distilled:
            raise EdgevitError(f"{artifacts}: exported without guidance (1 row per image); cfg {cfg} needs a "
                               "re-export with guidance on")
    else:
        from .checkpoint import load_folder

        host = load_folder(model).eval()
        programs, settings = EagerPrograms(host), SamplerSettings(cfg=1.5)
    if cfg is not None:
        settings = replace(settings, cfg=cfg)
    t = host.transformer
    if prompt is not None:
        from .text import load_text_encoder, prompt_conditions

        cond, uncond = prompt_conditions(t, load_text_encoder(text_encoder), prompt)
        stem = "prompt_" + ("".join(c if c.isalnum() else "-" for c in prompt.lower())[:40].strip("-") or "empty")
    else:
        n = t.cfg.num_classes
        if n <= 0:
            raise EdgevitError(f"{host.cfg.name}: text-conditioned; pass --prompt TEXT --text-encoder KIND:PATH")
        if not 0 <= label < n:
            raise EdgevitError(f"--class {label} is out of range: this model has classes 0..{n - 1}")
        cond, uncond = t.condition_from_labels(torch.tensor([label])), t.condition_from_labels(t.null_labels(1))
        stem = f"class{label}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        g = generate(programs, cond, uncond, settings, torch.Generator().manual_seed(seed + i))
        path = out / f"{stem}_seed{seed + i}.png"
        write_png(path, processing.signed_to_image(g.images[0].float().numpy()))
        paths.append(path)
        if progress:
            print(f"generate: {path} ({i + 1}/{count})", flush=True)
    return paths
