"""MarianMT in the OPUS-MT layout: teacher presets, configs, and the zero `<pad>` row rule."""

from __future__ import annotations

from transformers import GenerationConfig, MarianConfig

from wdctl.core.errors import InputError
from wdctl.passes import narrow_marian  # importing it registers the narrow model with the Auto classes
from wdctl.passes.presets import TEACHER_PRESETS, TeacherPreset, describe_presets  # noqa: F401 (torch-free; re-exported)
from wdctl.passes.student import check_teacher


def marian_config(preset: TeacherPreset, vocab_size: int, max_positions: int = 512) -> MarianConfig:
    """A MarianConfig in the OPUS-MT layout: `</s>`=0, `<unk>`=1, `<pad>` = last id = start token."""
    pad = vocab_size - 1
    return MarianConfig(
        vocab_size=vocab_size,
        decoder_vocab_size=vocab_size,
        d_model=preset.d_model,
        encoder_layers=preset.layers,
        decoder_layers=preset.layers,
        encoder_ffn_dim=preset.ffn_dim,
        decoder_ffn_dim=preset.ffn_dim,
        encoder_attention_heads=preset.heads,
        decoder_attention_heads=preset.heads,
        dropout=preset.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        activation_function="swish",
        max_position_embeddings=max_positions,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        static_position_embeddings=True,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
    )


def generation_config(config: MarianConfig, num_beams: int = 4, max_length: int = 256) -> GenerationConfig:
    return GenerationConfig(
        bad_words_ids=[[config.pad_token_id]],
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        forced_eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=max_length,
        num_beams=num_beams,
    )


def build_teacher(preset_name: str, vocab_size: int) -> "MarianMTModel":
    from transformers import MarianMTModel

    config = marian_config(TEACHER_PRESETS[preset_name], vocab_size)
    model = MarianMTModel(config)
    model.generation_config = generation_config(config)
    freeze_pad_row(model)
    return model


def freeze_pad_row(model) -> None:
    """Zero the `<pad>` embedding row and keep it zero while training.

    CTranslate2's Marian converter drops that row and starts decoding from a zero vector;
    `<pad>` is also the decoder start token, so the row must be zero from the first step on,
    not only at save time. The tied output layer would otherwise move it: a gradient hook
    zeroes its gradient (Adam then never moves it either, as long as weight decay is 0).
    """
    import torch

    pad = model.config.pad_token_id
    weights = [model.get_input_embeddings().weight]
    decoder_embedding = model.get_decoder().embed_tokens.weight  # a narrow decoder has its own
    if decoder_embedding is not weights[0]:
        weights.append(decoder_embedding)
    for weight in weights:
        with torch.no_grad():
            weight[pad].zero_()
        if weight.requires_grad:
            weight.register_hook(lambda grad: grad.index_fill(0, torch.tensor([pad], device=grad.device), 0.0))


# students and exports: MarianMTModel, or wdctl's NarrowMarianMTModel (`narrow_marian`); a
# teacher must be a plain Marian (`load_marian_config(..., teacher=True)`, `student.check_teacher`)
SUPPORTED_MODEL_TYPES = ("marian", "wdctl_narrow_marian")


def load_marian_config(model_dir, *, teacher: bool = False):
    """A model directory's config, checked to be MarianMT (or wdctl's narrow Marian, except with
    `teacher=True`: then `student.check_teacher`), with one-line errors naming the file."""
    from pathlib import Path

    from transformers import AutoConfig


    model_dir = Path(model_dir)
    _require_config(model_dir)
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{model_dir / 'config.json'}: unreadable model config ({str(exc).splitlines()[0]})") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            f"{model_dir / 'config.json'}: model type '{config.model_type}' is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)} — MarianMTModel)"
        )
    if teacher:
        try:
            check_teacher(config)
        except InputError as exc:
            raise InputError(f"{model_dir}: {exc}") from None
    return config


def check_model_dir(model_dir) -> None:
    """A MarianMT directory as `load_marian` wants it (config.json, model.safetensors), checked
    without reading either."""
    from pathlib import Path

    model_dir = Path(model_dir)
    _require_config(model_dir)
    check_weights(model_dir)


def _require_config(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: model directory not found")
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no config.json)")


def check_weights(model_dir) -> None:
    """safetensors weights only: a pickle file (.bin, .pt) is named and refused."""
    if not (model_dir / "model.safetensors").is_file():
        pickles = [p.name for p in model_dir.glob("*.bin")] + [p.name for p in model_dir.glob("*.pt")]
        hint = f" ({', '.join(pickles)} is a pickle file, which wdctl refuses to load)" if pickles else ""
        raise InputError(f"{model_dir}: no model.safetensors{hint}")


def count_parameters(config) -> int:
    """Distinct parameters of the model of this config, counted on the meta device (no memory)."""
    return narrow_marian.count_parameters(config)


def load_marian(model_dir, *, with_tokenizer: bool = True):
    """Load a MarianMT directory safely (safetensors only, no remote code) with clear errors.

    Returns (model, tokenizer or None).
    """
    from pathlib import Path

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model_dir = Path(model_dir)
    load_marian_config(model_dir)  # also registers the narrow model with the Auto classes
    check_weights(model_dir)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any failure here means a broken directory
        raise InputError(f"{model_dir / 'model.safetensors'}: cannot load weights ({str(exc).splitlines()[0]})") from None
    model.eval()
    tokenizer = None
    if with_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{model_dir}: cannot load tokenizer ({str(exc).splitlines()[0]})") from None
    return model, tokenizer


def save_marian(model, tokenizer, out_dir) -> None:
    """Write a standard Hugging Face MarianMT directory (safetensors weights + tokenizer)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
