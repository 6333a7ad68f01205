"""Text-conditioned HART: pluggable text encoders (a local transformers folder, precomputed embeddings), prompt
generation from a checkpoint and from exported programs (same tokens), and clear errors."""

import numpy as np
import pytest
import torch

from edgevit.errors import EdgevitError, UnknownKeyError
from edgevit.hart.checkpoint import save_folder
from edgevit.hart.configs import get_config, with_overrides
from edgevit.hart.generate import generate_images
from edgevit.hart.model import HartModel
from edgevit.hart.text import load_text_encoder
from edgevit.io import read_image

DIM, K = 16, 4
TEXT_CFG = with_overrides(get_config("hart-tiny"), num_classes=0, context_dim=DIM, context_tokens=K)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = HartModel(TEXT_CFG).eval()
    with torch.no_grad():  # non-trivial context projection and diffusion output
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name or "context_embed" in name:
                p.normal_(0, 0.2)
    return save_folder(model, tmp_path_factory.mktemp("text") / "hart")


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    g = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("emb") / "prompts.npz"
    np.savez(path, prompts=np.array(["a red square", "a blue sky", ""]),
             context=g.normal(size=(3, K, DIM)).astype(np.float32))
    return f"npz:{path}"


def _pixels(paths):
    return [read_image(p).astype(int) for p in paths]


def test_prompt_generation_is_seeded_and_prompt_dependent(checkpoint, npz, tmp_path):
    a = generate_images(tmp_path / "a", model=checkpoint, prompt="a red square", text_encoder=npz, seed=3)
    b = generate_images(tmp_path / "b", model=checkpoint, prompt="a red square", text_encoder=npz, seed=3)
    c = generate_images(tmp_path / "c", model=checkpoint, prompt="a blue sky", text_encoder=npz, seed=3)
    assert a[0].name == "prompt_a-red-square_seed3.png"
    assert np.array_equal(*_pixels([a[0], b[0]])) and not np.array_equal(*_pixels([a[0], c[0]]))


def test_hf_folder_encoder(tmp_path):
    """A tiny randomly initialised transformers model + WordLevel tokenizer, saved the way a user's folder is."""
    tf = pytest.importorskip("transformers", reason="transformers (the 'text' extra) is not installed")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "a", "red", "blue", "square", "sky"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=len(vocab), hidden_size=DIM, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    tf.BertModel(cfg).save_pretrained(tmp_path / "enc")
    fast.save_pretrained(tmp_path / "enc")
    enc = load_text_encoder(f"hf:{tmp_path / 'enc'}")
    ctx, mask = enc.encode(["a red square", "a blue sky blue sky blue", ""], K)
    assert ctx.shape == (3, K, DIM) and ctx.dtype == torch.float32
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]  # padded, truncated, empty
    assert not torch.allclose(ctx[0], ctx[1])
    with pytest.raises(EdgevitError, match="not a transformers model folder"):
        load_text_encoder(f"hf:{tmp_path}")


def test_exported_text_model_matches_eager_for_a_prompt(checkpoint, npz, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed")
    from edgevit.hart.export import export_hart

    torch.set_num_threads(1)
    top = export_hart(checkpoint, "onnx", tmp_path / "art", labels=[0, 1], progress=False)
    assert top["fidelity"]["token_agreement"] == 1.0 and top["contract"]["prefix_len"] == K
    art = generate_images(tmp_path / "x", artifacts=tmp_path / "art", prompt="a blue sky", text_encoder=npz, seed=1)
    eager = generate_images(tmp_path / "y", model=checkpoint, prompt="a blue sky", text_encoder=npz, seed=1)
    assert np.abs(_pixels(art)[0] - _pixels(eager)[0]).max() <= 1


def test_text_errors(checkpoint, npz, tmp_path):
    with pytest.raises(EdgevitError, match="--prompt needs --text-encoder"):
        generate_images(tmp_path, model=checkpoint, prompt="a red square")
    with pytest.raises(EdgevitError, match="exactly one of --class N or --prompt"):
        generate_images(tmp_path, 1, model=checkpoint, prompt="a red square", text_encoder=npz)
    with pytest.raises(EdgevitError, match="text-conditioned; pass --prompt"):
        generate_images(tmp_path, 1, model=checkpoint)
    with pytest.raises(EdgevitError, match="no precomputed embedding"):
        generate_images(tmp_path, model=checkpoint, prompt="a green tree", text_encoder=npz)
    with pytest.raises(UnknownKeyError, match="did you mean"):
        load_text_encoder("hff:/models/x")
    with pytest.raises(EdgevitError, match="expected KIND:PATH"):
        load_text_encoder("/models/x")
    wide = tmp_path / "wide.npz"
    np.savez(wide, prompts=np.array(["x", ""]), context=np.zeros((2, K, DIM + 1), np.float32))
    with pytest.raises(EdgevitError, match="17-d embeddings; this model takes 16-d"):
        generate_images(tmp_path, model=checkpoint, prompt="x", text_encoder=f"npz:{wide}")
    cls_ckpt = save_folder(HartModel(get_config("hart-tiny")), tmp_path / "cls")
    with pytest.raises(EdgevitError, match="class-conditioned; use --class"):
        generate_images(tmp_path, model=cls_ckpt, prompt="a red square", text_encoder=npz)
