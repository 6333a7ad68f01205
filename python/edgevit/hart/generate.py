"""``edgevit generate``: class-conditional images from exported HART programs (``--artifacts``) or an eager
checkpoint folder (``--model``), one PNG per image. Image i uses seed ``seed + i``; the same seed gives the
same tokens with either source (the artifact gate checks exactly that)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .. import processing
from ..errors import EdgevitError
from ..io import write_png
from .sampler import EagerPrograms, SamplerSettings


def generate_images(out: str | Path, label: int, artifacts: str | Path | None = None, model: str | Path | None = None,
                    seed: int = 0, count: int = 1, cfg: float | None = None, threads: int | None = None,
                    progress: bool = False) -> list[Path]:
    """Write ``count`` images of class ``label`` into ``out`` as ``class<label>_seed<s>.png`` (uint8 RGB).

    Exactly one of ``artifacts`` (a folder from ``export_hart``) or ``model`` (a checkpoint folder in the
    upstream layout, run eagerly) is required. ``cfg``: guidance scale (default: the artifacts' exported
    setting, 1.5 for eager models). Returns the written paths."""
    from .export import generate_one

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
    n = host.cfg.transformer.num_classes
    if n <= 0:
        raise EdgevitError(f"{host.cfg.name}: text-conditioned; --class needs a class-conditional model")
    if not 0 <= label < n:
        raise EdgevitError(f"--class {label} is out of range: this model has classes 0..{n - 1}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        g = generate_one(programs, host, label, seed + i, settings)
        path = out / f"class{label}_seed{seed + i}.png"
        write_png(path, processing.signed_to_image(g.images[0].float().numpy()))
        paths.append(path)
        if progress:
            print(f"generate: {path} ({i + 1}/{count})", flush=True)
    return paths
