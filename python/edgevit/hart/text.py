"""Pluggable text encoders for text-conditioned HART models: a prompt becomes K context embeddings
(B×K×D float32) that the transformer takes as its prefix (``HartTransformer.condition_from_context``).

Upstream HART encodes prompts with a Qwen2 language model (last hidden states). Here an encoder is picked
by a spec ``KIND:ARG`` from :data:`TEXT_ENCODERS`:

* ``hf:FOLDER`` — a Hugging Face ``transformers`` model and its tokenizer from a local folder (any model
  with ``last_hidden_state``; the user supplies the weights, nothing is downloaded). Prompts are padded or
  truncated to the model's K context tokens.
* ``npz:FILE`` — precomputed embeddings (``prompts`` array of strings + ``context`` N×K×D, optional ``mask``
  N×K): for devices where the text encoder runs elsewhere, and for tests.

Classifier-free guidance uses the empty prompt's embeddings as the unconditional branch, as upstream does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import EdgevitError, require
from ..registry import Registry


class TextEncoder(Protocol):
    """``encode(prompts, tokens)`` → (context B×tokens×dim float32, mask B×tokens float32, 1 = real token)."""

    dim: int

    def encode(self, prompts: Sequence[str], tokens: int) -> tuple[torch.Tensor, torch.Tensor]: ...


TEXT_ENCODERS: Registry[Callable[[str], TextEncoder]] = Registry("text encoder")


@TEXT_ENCODERS.register("hf")
class HFTextEncoder:
    """Last hidden states of a local ``transformers`` model folder (config, weights and tokenizer files)."""

    def __init__(self, folder: str):
        tf = require("transformers", "text", "a Hugging Face text encoder")
        path = Path(folder)
        if not (path / "config.json").is_file():
            raise EdgevitError(f"{path}: not a transformers model folder (no config.json); pass the folder holding "
                               "the text encoder's config, weights and tokenizer files")
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
            self.model = tf.AutoModel.from_pretrained(str(path)).eval()
        except (OSError, ValueError) as exc:
            raise EdgevitError(f"{path}: cannot load the text encoder ({str(exc).splitlines()[0]})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=tokens,
                               return_tensors="pt")
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state.float().clone(), batch["attention_mask"].float()


@TEXT_ENCODERS.register("npz")
class PrecomputedTextEncoder:
    """Embeddings looked up by exact prompt from an ``.npz`` (``prompts``, ``context`` N×K×D, optional ``mask``)."""

    def __init__(self, file: str):
        path = Path(file)
        try:
            data = np.load(path, allow_pickle=False)
            prompts, context = [str(p) for p in data["prompts"]], data["context"].astype(np.float32)
            mask = data["mask"].astype(np.float32) if "mask" in data else np.ones(context.shape[:2], np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise EdgevitError(f"{path}: not a prompt-embedding .npz with 'prompts' and 'context' ({exc})") from None
        if context.ndim != 3 or len(prompts) != context.shape[0] or mask.shape != context.shape[:2]:
            raise EdgevitError(f"{path}: 'context' must be N×K×D and 'mask' N×K for its N prompts")
        self.index = {p: i for i, p in enumerate(prompts)}
        self.context, self.mask, self.dim = torch.from_numpy(context), torch.from_numpy(mask), int(context.shape[2])

    def encode(self, prompts: Sequence[str], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [p for p in prompts if p not in self.index]
        if missing:
            raise EdgevitError(f"prompt {missing[0]!r} has no precomputed embedding; this file holds "
                               f"{len(self.index)} prompts")
        if self.context.shape[1] != tokens:
            raise EdgevitError(f"precomputed embeddings have {self.context.shape[1]} tokens; the model takes {tokens}")
        rows = [self.index[p] for p in prompts]
        return self.context[rows].clone(), self.mask[rows].clone()


def load_text_encoder(spec: str) -> TextEncoder:
    """``KIND:ARG`` (e.g. ``hf:/models/qwen2-1.5b``, ``npz:prompts.npz``) → a :class:`TextEncoder`."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise EdgevitError(f"--text-encoder {spec!r}: expected KIND:PATH with KIND one of "
                           f"{', '.join(TEXT_ENCODERS)} (e.g. hf:/models/qwen2)")
    return TEXT_ENCODERS.get(kind)(arg)


def prompt_conditions(transformer, encoder: TextEncoder, prompt: str):
    """(cond, uncond) :class:`~edgevit.hart.transformer.Condition` pair for one prompt; the unconditional
    branch is the empty prompt."""
    cfg = transformer.cfg
    if cfg.context_dim <= 0:
        raise EdgevitError("this model is class-conditioned; use --class, not --prompt")
    if encoder.dim != cfg.context_dim:
        raise EdgevitError(f"the text encoder gives {encoder.dim}-d embeddings; this model takes {cfg.context_dim}-d")
    ctx, mask = encoder.encode([prompt, ""], transformer.prefix_len)
    return (transformer.condition_from_context(ctx[:1], mask[:1]),
            transformer.condition_from_context(ctx[1:], mask[1:]))
