"""ONNX export of a NarrowMarianMTModel (the paper's TINY) through optimum's exporter.

optimum knows Marian, not wdctl's narrow model. Two things make `main_export` work for it:

- `register_onnx_config()` registers `NarrowMarianOnnxConfig` for the model type: Marian's ONNX
  config, except that the dummy past key/values (self- and cross-attention caches of the
  decoder) have the *decoder's* width and heads, while the encoder outputs keep the encoder's;
- `as_transformers_model()`: optimum infers a model's library from its class's module and
  rejects `wdctl.passes.narrow_marian` (and ignores `library_name=` at that step), so the
  export runs with that inference pinned to "transformers".

Call `export_narrow(model_dir, out)` or wrap your own `main_export(...)` in
`as_transformers_model()` after `register_onnx_config()`. optimum's own validation
(`do_validation=True`) builds its reference caches with the encoder's heads and fails; validate
against PyTorch instead (wdctl's exporter does, with `do_validation=False`). The exported
encoder, decoder and merged decoder (with KV cache) match PyTorch to ~1e-7.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

from wdctl.passes.narrow_marian import NARROW_MODEL_TYPE

_REGISTERED = False


def register_onnx_config() -> None:
    """Register the narrow model's ONNX config with optimum's TasksManager (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from optimum.exporters.onnx.model_configs import COMMON_TEXT2TEXT_GENERATION_TASKS, MarianOnnxConfig
    from optimum.exporters.tasks import TasksManager
    from optimum.utils.normalized_config import NormalizedSeq2SeqConfig

    class NarrowMarianOnnxConfig(MarianOnnxConfig):
        """Marian's ONNX config; the decoder's caches have the decoder's width and heads."""

        DECODER_NORMALIZED_CONFIG_CLASS = NormalizedSeq2SeqConfig.with_args(
            hidden_size="decoder_d_model",
            encoder_num_layers="encoder_layers",
            decoder_num_layers="decoder_layers",
            num_layers="decoder_layers",
            # optimum's "encoder" heads are the cross-attention's, which are the decoder's
            encoder_num_attention_heads="decoder_attention_heads",
            decoder_num_attention_heads="decoder_attention_heads",
            eos_token_id="eos_token_id",
        )

        def _create_dummy_input_generator_classes(self, **kwargs):
            generators = super()._create_dummy_input_generator_classes(**kwargs)
            task = "feature-extraction" if self.task != "text-generation" else "text-generation"
            if self.task != "text-generation":
                kwargs["encoder_sequence_length"] = generators[0].sequence_length
            generators[2] = self.DUMMY_INPUT_GENERATOR_CLASSES[2][task](
                self.task, self.DECODER_NORMALIZED_CONFIG_CLASS(self._config), **kwargs)
            return generators

    TasksManager.create_register("onnx")(NARROW_MODEL_TYPE, *COMMON_TEXT2TEXT_GENERATION_TASKS)(NarrowMarianOnnxConfig)
    _REGISTERED = True


@contextlib.contextmanager
def as_transformers_model():
    """Within: optimum takes every model for a transformers one (see the module docstring)."""
    from optimum.exporters.tasks import TasksManager

    with mock.patch.object(TasksManager, "infer_library_from_model",
                           classmethod(lambda cls, *args, **kwargs: "transformers")):
        yield


def export_narrow(model_dir: Path | str, out: Path | str, task: str = "text2text-generation-with-past") -> None:
    """optimum's exporter on a saved NarrowMarianMTModel directory, into `out` (not validated)."""
    from optimum.exporters.onnx import main_export

    register_onnx_config()
    with as_transformers_model():
        main_export(str(model_dir), output=str(out), task=task, device="cpu", do_validation=False,
                    local_files_only=True, trust_remote_code=False, library_name="transformers")
