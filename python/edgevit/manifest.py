"""Artifact manifests: the JSON that travels with every exported model.

Tools read the manifest, never the file name: it says which model, format and precision an artifact is,
its I/O (names, shapes, dtypes, layout), the full pre/post-processing contract, the calibration set
digest, tool versions, every graph substitution made for export, the artifact's sha256 and the fidelity
measured at export.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import io
from .errors import EdgevitError

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    """Everything needed to run and trust one artifact. ``artifact`` is a file name relative to the manifest."""

    model_id: str
    format: str  # backend name: pte | tflite | onnx | engine
    precision: str  # fp32 | fp16 | int8
    artifact: str
    sha256: str
    size_bytes: int
    inputs: list[dict[str, Any]]  # [{"name", "shape" (ints), "dtype", "layout"}]
    outputs: list[dict[str, Any]]
    contract: dict[str, Any]  # SegContract.to_dict(): normalization, resize, labels, ...
    tool_versions: dict[str, str]
    calibration: dict[str, Any] | None = None  # {"digest", "count", "source"}
    quantization: dict[str, Any] | None = None  # recipe, kept-float layers and why
    substitutions: list[dict[str, Any]] = field(default_factory=list)
    delegation: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None
    weights: str | None = None
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> Manifest:
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("model_id", "format", "precision", "artifact", "sha256", "inputs", "outputs")
                   if k not in data]
        if missing or not isinstance(data, dict):
            raise EdgevitError(f"{source}: not an edgevit manifest (missing {missing}); re-export the artifact")
        if data.get("version") != MANIFEST_VERSION:
            raise EdgevitError(f"{source}: manifest version {data.get('version')} is not supported "
                               f"(this edgevit reads version {MANIFEST_VERSION}); re-export the artifact")
        return cls(**{k: v for k, v in data.items() if k in known})


def write_manifest(manifest: Manifest, directory: str | Path) -> Path:
    path = Path(directory) / MANIFEST_NAME
    io.write_json(path, manifest.to_json())
    return path


def read_manifest(path: str | Path, verify: bool = True) -> tuple[Manifest, Path]:
    """Read a manifest (or the manifest inside an artifact folder); returns it and the artifact path.

    With ``verify`` the artifact's size and sha256 are checked against the manifest.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    elif path.suffix != ".json":
        raise EdgevitError(f"{path}: pass the artifact folder or its {MANIFEST_NAME}, not the model file itself")
    data = io.read_json_object(path, "pass a folder written by 'edgevit export'", "re-export the artifact")
    manifest = Manifest.from_json(data, str(path))
    artifact = path.parent / manifest.artifact
    if not artifact.is_file():
        raise EdgevitError(f"{artifact}: artifact named by {path} is missing")
    if verify:
        size = artifact.stat().st_size
        if size != manifest.size_bytes:
            raise EdgevitError(f"{artifact}: size {size} B differs from the manifest's {manifest.size_bytes} B "
                               "(truncated or replaced); re-export it")
        digest = sha256_file(artifact)
        if digest != manifest.sha256:
            raise EdgevitError(f"{artifact}: sha256 {digest[:12]}… does not match the manifest's "
                               f"{manifest.sha256[:12]}… (tampered or replaced); re-export it")
    return manifest, artifact


def read_folder_manifest(folder: str | Path, kind: str, version: int, what: str, writer: str) -> dict[str, Any]:
    """The top-level manifest of a multi-artifact folder (SAM encoder + decoder, HART programs).

    Checks its ``kind`` and ``version``. For the errors: ``what`` names the folder type (e.g. "SAM artifact"),
    ``writer`` the command that writes such folders.
    """
    path = Path(folder) / MANIFEST_NAME
    top = io.read_json_object(path, f"pass a folder written by '{writer}'", "re-export the folder")
    if top.get("kind") != kind:
        raise EdgevitError(f"{path}: not a {what} folder (kind {top.get('kind')!r}, expected {kind!r}); pass a "
                           f"folder written by '{writer}' (single artifacts load with edgevit.load_artifact)")
    if top.get("version") != version:
        raise EdgevitError(f"{path}: version {top.get('version')} is not supported (reads {version}); re-export")
    return top


def verify_component(folder: str | Path, rel: str, expected_sha256: str, what: str) -> Path:
    """``folder/rel`` after checking it exists and its sha256 is the one the folder's top manifest records."""
    folder = Path(folder)
    path = folder / rel
    if not path.is_file():
        raise EdgevitError(f"{path}: {what} named by {folder / MANIFEST_NAME} is missing; re-export the folder")
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise EdgevitError(f"{path}: {what} sha256 {digest[:12]}… does not match the top-level manifest's "
                           f"{str(expected_sha256)[:12]}… (tampered or replaced); re-export the folder")
    return path
