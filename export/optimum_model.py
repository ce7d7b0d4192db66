"""A package's encoder + merged decoder in optimum's `ORTModelForSeq2SeqLM`: transformers'
`generate()` over onnxruntime, the reference beside the in-graph translator. Export validation,
the quantized package's re-score, `wdctl translate` (older packages, `--device cuda`) and the
bench's ort-optimum rows all load it here, so they run the same files with the same options."""

from __future__ import annotations

from pathlib import Path

from wdctl.core.errors import InputError, WdctlError
from wdctl.export.package import OnnxPackage
from wdctl.export.session import hold_torch_threads, providers_for, session_options
from wdctl.passes.narrow_marian import decoder_width


class _Evaluable:
    """ORTModelForSeq2SeqLM has no `.eval()`, which `translate_torch` calls; all else is the model's."""

    def __init__(self, model) -> None:
        self.model = model

    def eval(self):
        return self

    def __getattr__(self, name):
        return getattr(self.model, name)


def load_optimum(package: Path | str, *, threads: int = 1, device: str = "cpu"):
    """The package in ORTModelForSeq2SeqLM (KV cache; IO binding on cuda), ready for
    `wdctl.passes.translate.translate_torch`. Torch is held to one thread: its small ops between
    the ORT calls must not compete with onnxruntime's `threads`."""
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    package = OnnxPackage(package)
    providers = providers_for(device)
    encoder, decoder = package.encoder, package.decoder  # standard or quantized names
    hold_torch_threads(1)
    # optimum finds the merged decoder by itself only when given no decoder file name (a name
    # sends it looking for decoder_with_past_model.onnx), so check that it took ours
    try:
        model = ORTModelForSeq2SeqLM.from_pretrained(
            package.path, encoder_file_name=encoder.name, use_merged=True, use_cache=True,
            session_options=session_options(threads), provider=providers[0], use_io_binding=device == "cuda",
            local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - optimum and onnxruntime raise many types
        raise InputError(f"{package.path}: optimum cannot load the package ({' '.join(str(exc).split())[:200]})") from None
    loaded = Path(str(model.decoder.path)).name
    if loaded != decoder.name:
        raise WdctlError(f"{package.path}: optimum loaded {loaded}, not {decoder.name}")
    # optimum sizes the decoder's first (empty) cache by the encoder's heads and width; wdctl's
    # narrow Marian (the TINY student) has a decoder of its own width
    heads = model.config.decoder_attention_heads
    model.decoder.num_attention_heads = heads
    model.decoder.embed_size_per_head = decoder_width(model.config) // heads
    return _Evaluable(model)
