"""A Marian model whose decoder is narrower than its encoder: the paper's TINY student.

A Hugging Face `MarianConfig` has one `d_model`. The paper's TINY keeps the teacher's encoder
and gives the decoder half the width, so wdctl has its own config and model class:

- `NarrowMarianConfig` (`model_type = "wdctl_narrow_marian"`): a `MarianConfig` whose `d_model`
  is the *encoder's* width, plus `decoder_d_model`. Embeddings are never shared between the
  sides (`share_encoder_decoder_embeddings=False`); with `tie_word_embeddings` the decoder's
  token embedding is tied to the output layer.
- `NarrowMarianMTModel`: transformers' Marian modules, the decoder built at `decoder_d_model`,
  with each cross-attention's K/V projections mapping d_enc → d_dec. It generates (greedy and
  beam) like MarianMTModel and saves/loads with safetensors. Unlike MarianMTModel it *saves*
  its sinusoidal position tables: a student's decoder table is the teacher's, projected to the
  decoder width (it is not the sinusoid of the narrower width).

Importing this module registers both classes with transformers' Auto classes, and `import
wdctl` arranges for that to happen as soon as transformers is imported (`autoregister`), so
`AutoModelForSeq2SeqLM.from_pretrained(DIR)` loads a saved model without `trust_remote_code`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, MarianConfig, MarianMTModel
from transformers.models.marian.modeling_marian import (
    MarianDecoder,
    MarianEncoder,
    MarianModel,
    MarianPreTrainedModel,
)

NARROW_MODEL_TYPE = "wdctl_narrow_marian"


class NarrowMarianConfig(MarianConfig):
    """MarianConfig plus `decoder_d_model` (`d_model` is the encoder's width)."""

    model_type = NARROW_MODEL_TYPE

    def __init__(self, decoder_d_model: int | None = None, **kwargs):
        kwargs["share_encoder_decoder_embeddings"] = False
        super().__init__(**kwargs)
        self.decoder_d_model = int(decoder_d_model) if decoder_d_model is not None else self.d_model

    @classmethod
    def from_marian(cls, config: MarianConfig, decoder_d_model: int) -> "NarrowMarianConfig":
        """The same settings as `config` with a decoder of width `decoder_d_model`."""
        values = config.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "share_encoder_decoder_embeddings"):
            values.pop(key, None)
        values["decoder_d_model"] = decoder_d_model
        narrow = cls(**values)
        narrow.architectures = ["NarrowMarianMTModel"]
        return narrow


@contextlib.contextmanager
def _width(config: MarianConfig, d_model: int):
    """Marian's modules read `config.d_model` only while they are built."""
    saved = config.d_model
    config.d_model = d_model
    try:
        yield config
    finally:
        config.d_model = saved


class NarrowMarianModel(MarianModel):
    config_class = NarrowMarianConfig
    _tied_weights_keys: list[str] = []

    def __init__(self, config: NarrowMarianConfig):
        MarianPreTrainedModel.__init__(self, config)
        pad = config.pad_token_id
        d_enc, d_dec = config.d_model, config.decoder_d_model
        self.shared = None
        self.encoder = MarianEncoder(config, nn.Embedding(config.vocab_size, d_enc, pad))
        with _width(config, d_dec):
            self.decoder = MarianDecoder(config, nn.Embedding(config.decoder_vocab_size, d_dec, pad))
        for layer in self.decoder.layers:
            attn = layer.encoder_attn
            attn.k_proj = nn.Linear(d_enc, d_dec, bias=attn.k_proj.bias is not None)
            attn.v_proj = nn.Linear(d_enc, d_dec, bias=attn.v_proj.bias is not None)
        self.post_init()


class NarrowMarianMTModel(MarianMTModel):
    """MarianMTModel with a decoder of its own (narrower) width; see the module docstring."""

    config_class = NarrowMarianConfig
    _keys_to_ignore_on_load_missing = ["final_logits_bias"]
    _keys_to_ignore_on_save = None  # the position tables are saved (see the module docstring)
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: NarrowMarianConfig):
        MarianPreTrainedModel.__init__(self, config)
        self.model = NarrowMarianModel(config)
        vocab = config.decoder_vocab_size
        self.register_buffer("final_logits_bias", torch.zeros((1, vocab)))
        self.lm_head = nn.Linear(config.decoder_d_model, vocab, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As MarianMTModel's, with the sinusoidal position tables frozen: this class saves them,
        and loading makes saved tables trainable parameters, which they never are (a built model
        has them frozen, so a phase resumed from a saved student would not match its checkpoint)."""
        model = super().from_pretrained(*args, **kwargs)
        for side in (model.model.encoder, model.model.decoder):
            side.embed_positions.weight.requires_grad_(False)
        return model


def is_narrow(config: object) -> bool:
    return getattr(config, "model_type", None) == NARROW_MODEL_TYPE


def model_class(config: MarianConfig) -> type[MarianMTModel]:
    """The seq2seq class that holds a model of this config."""
    return NarrowMarianMTModel if is_narrow(config) else MarianMTModel


def build_model(config: MarianConfig) -> MarianMTModel:
    """A randomly initialised model of this config (MarianMTModel or NarrowMarianMTModel)."""
    return model_class(config)(config)


def count_parameters(config: MarianConfig) -> int:
    """Distinct parameters of the model of this config, counted on the meta device."""
    with torch.device("meta"):
        return build_model(config).num_parameters()


def vocabulary_parameters(config: MarianConfig) -> int:
    """Distinct parameters of the model's vocabulary tables (token embeddings and output layer;
    not the sinusoidal position tables), counted on the meta device."""
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for name, p in model.named_parameters()
               if name.endswith(("shared.weight", "embed_tokens.weight", "lm_head.weight")))


def decoder_width(config: MarianConfig) -> int:
    return getattr(config, "decoder_d_model", None) or config.d_model


def ct2_unsupported(config: object) -> str | None:
    """Why CTranslate2 cannot convert a model of this config (one line), or None if it can.
    Its converter has no loader for this model type, and its Transformer spec has one width for
    encoder and decoder; the bench skips its ct2 row for such a model with this reason."""
    if is_narrow(config):
        return (f"CTranslate2 cannot convert '{NARROW_MODEL_TYPE}' (a decoder narrower than the encoder; "
                "its converter knows only MarianConfig's single d_model)")
    return None


def register() -> None:
    """Register with transformers' Auto classes (idempotent)."""
    try:
        AutoConfig.register(NARROW_MODEL_TYPE, NarrowMarianConfig)
    except ValueError:  # already registered
        pass
    for auto, cls in ((AutoModel, NarrowMarianModel), (AutoModelForSeq2SeqLM, NarrowMarianMTModel)):
        try:
            auto.register(NarrowMarianConfig, cls)
        except ValueError:
            pass


register()
