"""``Predictor``: encode an image once, then decode masks for any number of prompts.

The predictor only ever calls two numpy functions with static shapes, so it runs the same on eager
PyTorch and on exported artifacts:

* encode: float32 1×3×S×S → the image state: embeddings 1×256×64×64, or a tuple starting with them
  (artifacts add the decoder's per-image ``image_context`` 1×4096×384)
* decode: (*image state, coords 1×P×2, labels 1×P, mask_input 1×1×256×256, has_mask_input 1)
  → (mask logits 1×4×256×256, IoU 1×4), P = ``contract.max_points`` (16)

Prompt rules (clear errors, never a silent wrong mask):

* ``points`` are (x, y) pixels of the original image, inside [0, W] × [0, H]; anything outside raises
  (typically coordinates of another frame). ``labels``: 1 foreground, 0 background.
* ``box`` = (x0, y0, x1, y1) original pixels, x1 > x0, y1 > y0. A box partly outside the image is clipped
  to it (documented clipping); a box with no area inside the image raises.
* Slots: points + 2 box corners, or points + 1 padding slot when there is no box (the "not a point"
  token SAM adds), must fit in P: at most 15 points without a box, 14 with one.
* At least one point or a box is required; ``mask_input`` (1×256×256 or 256×256 low-res logits from a
  previous call) refines, it cannot prompt alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import processing
from ..errors import EdgevitError

EncoderFn = Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, ...]]
DecoderFn = Callable[..., tuple[np.ndarray, np.ndarray]]


def _torch_functions(model: Any) -> tuple[EncoderFn, DecoderFn]:
    import torch

    decoder = model.prompt_decoder.eval()

    def encode(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.image_encoder(torch.from_numpy(x)).float().numpy()

    def decode(*arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            masks, iou = decoder(*(torch.from_numpy(a) for a in arrays))
        return masks.float().numpy(), iou.float().numpy()

    return encode, decode


class Predictor:
    """``Predictor(model)`` for an eager EfficientViT-SAM module (from ``create_model``), or
    ``Predictor((encoder, decoder), contract=SamContract)`` for two numpy callables (e.g. artifact runners),
    or ``Predictor(load_sam_artifacts(folder))`` (anything with ``predictor_functions() -> (encode, decode,
    contract)``)."""

    def __init__(self, model_or_runners: Any, contract: Any = None):
        functions = getattr(model_or_runners, "predictor_functions", None)
        if callable(functions):
            self.encode, self.decode, own = functions()
            contract = contract or own
        elif isinstance(model_or_runners, tuple):
            if contract is None or len(model_or_runners) != 2:
                raise EdgevitError("Predictor((encoder, decoder), contract=...): pass both runners and the SamContract")
            self.encode, self.decode = model_or_runners
        else:
            if not hasattr(model_or_runners, "image_encoder") or not hasattr(model_or_runners, "prompt_decoder"):
                raise EdgevitError(f"Predictor: {type(model_or_runners).__name__} is not an EfficientViT-SAM model; "
                                   "create one with edgevit.create_model('efficientvit-sam-l0')")
            self.encode, self.decode = _torch_functions(model_or_runners)
            contract = contract or model_or_runners.contract
        self.contract = contract
        self.image_state: tuple[np.ndarray, ...] = ()
        self.original_size: tuple[int, int] | None = None

    @property
    def embeddings(self) -> np.ndarray | None:
        """The current image's embeddings 1×256×64×64 (None before :meth:`set_image`)."""
        return self.image_state[0] if self.image_state else None

    def set_image(self, image: np.ndarray) -> None:
        """Run the encoder once on ``image`` (uint8 H×W×3 RGB); later ``predict`` calls reuse it."""
        x, _ = processing.sam_image_to_input(image, self.contract.image_size, self.contract.mean, self.contract.std)
        out = self.encode(x)
        state = tuple(np.asarray(a, dtype=np.float32) for a in (out if isinstance(out, tuple) else (out,)))
        c = self.contract
        if state[0].shape != (1, c.embed_dim, c.embed_size, c.embed_size):
            raise EdgevitError(f"Predictor: the encoder returned {state[0].shape}; expected (1, {c.embed_dim}, "
                               f"{c.embed_size}, {c.embed_size})")
        self.image_state = state
        self.original_size = (int(image.shape[0]), int(image.shape[1]))

    def prompt_arrays(self, points: Any = None, labels: Any = None, box: Any = None,
                      mask_input: Any = None) -> tuple[np.ndarray, ...]:
        """The decoder's static inputs (coords, labels, mask_input, has_mask_input) for these prompts."""
        if self.original_size is None:
            raise EdgevitError("Predictor: call set_image(image) before predict()")
        h, w = self.original_size
        if points is None and box is None:
            raise EdgevitError("Predictor.predict: give at least one point or a box (a mask input alone is not a prompt)")
        pts = np.zeros((0, 2))
        labs = np.zeros(0)
        if points is not None:
            pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) if np.size(points) else np.zeros((0, 2))
            if labels is None or np.size(labels) != len(pts):
                raise EdgevitError(f"Predictor.predict: {len(pts)} points need as many labels (1 fg, 0 bg)")
            labs = np.asarray(labels, dtype=np.float64).reshape(-1)
            if not np.isin(labs, (0, 1)).all():
                raise EdgevitError(f"Predictor.predict: point labels must be 1 (foreground) or 0 (background), got {labs.tolist()}")
            outside = ~np.all(np.isfinite(pts) & (pts >= 0) & (pts <= [w, h]), axis=1)
            if outside.any():
                raise EdgevitError(f"Predictor.predict: point {pts[outside][0].tolist()} is outside the {w}x{h} image; "
                                   "points are (x, y) pixels of the original image")
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(-1)
            if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
                raise EdgevitError(f"Predictor.predict: box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box!r}")
            b = np.clip(b, 0, [w, h, w, h])  # documented clipping to the image
            if b[2] <= b[0] or b[3] <= b[1]:
                raise EdgevitError(f"Predictor.predict: box {list(box)} lies outside the {w}x{h} image")
            pts = np.concatenate([pts, b.reshape(2, 2)])
            labs = np.concatenate([labs, [2, 3]])
        p = self.contract.max_points
        used = len(pts) + (0 if box is not None else 1)
        if used > p:
            raise EdgevitError(f"Predictor.predict: {len(labs) - (2 if box is not None else 0)} points"
                               f"{' and a box' if box is not None else ''} need {used} prompt slots; the decoder takes {p}")
        coords = np.zeros((1, p, 2), np.float32)
        slots = -np.ones((1, p), np.float32)
        coords[0, : len(pts)] = processing.sam_transform_coords(pts, self.original_size, self.contract.prompt_frame)
        slots[0, : len(labs)] = labs
        m = self.contract.mask_size
        mask = np.zeros((1, 1, m, m), np.float32)
        if mask_input is not None:
            mi = np.asarray(mask_input, dtype=np.float32)
            if mi.size != m * m or mi.shape[-2:] != (m, m):
                raise EdgevitError(f"Predictor.predict: mask_input must be {m}x{m} low-res logits, got {mi.shape}")
            mask[0, 0] = mi.reshape(m, m)
        return coords, slots, mask, np.array([0.0 if mask_input is None else 1.0], np.float32)

    def predict(self, points: Any = None, labels: Any = None, box: Any = None, mask_input: Any = None,
                multimask: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the prompts on the current image (see module docstring for the rules).

        Returns ``(masks, scores, low_res)``: bool K×H×W at the original size (bilinear upsampling of the
        logits, threshold 0), predicted IoU float32 K, logits float32 K×256×256 (feed one back as
        ``mask_input``). K = 3 with ``multimask``, else 1.
        """
        arrays = self.prompt_arrays(points, labels, box, mask_input)
        masks, iou = self.decode(*self.image_state, *arrays)
        sl = slice(1, 4) if multimask else slice(0, 1)
        low = np.ascontiguousarray(np.asarray(masks, dtype=np.float32)[0, sl])
        logits = processing.sam_postprocess_masks(low, self.original_size, self.contract.prompt_frame)
        return logits > 0, np.asarray(iou, dtype=np.float32)[0, sl], low
