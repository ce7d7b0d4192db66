"""Activation ranges for the int8 translator: each weight product's input, measured once in
PyTorch, so that int8 quantizes it with a fixed scale instead of one computed per call.

Why fixed: `DynamicQuantizeMatMul` takes one activation scale per call from the whole (batch x
beams, d) input, so a sentence's int8 rounding, and sometimes its line, depended on the other
sentences of its search. Per-row scales are what CTranslate2 does; onnxruntime 1.32's only CPU
op for them, 8-bit `MatMulNBits` (accuracy level 4: the input quantized per block of a row), took
1.3x `DynamicQuantizeMatMul`'s time per call at 1 row and 2-2.3x at 4-128 rows on AVX2
(`benchmarks/int8_activations.py`). A calibrated per-tensor range (`QuantizeLinear` +
`MatMulIntegerToFloat`) costs the same as the dynamic op and makes every row independent.

The ranges come from a teacher-forced pass over calibration sentences and the model's own greedy
translations of them (real tokens only, padding masked out), keyed by the translator graph's
weight names (`translator_graph`), recorded in the fp32 translator's metadata
(`wdctl.activation_ranges`) and read by `quantize_translator`.
"""

from __future__ import annotations

import json
from typing import Sequence

METADATA_KEY = "wdctl.activation_ranges"
OUTPUT_PROJECTION = "dec.lm_head.w"  # the shortlisted projection reads the same input


def product_inputs(model) -> dict:
    """{translator graph weight name: the module whose input is that product's left operand}.
    The fused Q/K/V product reads the q projection's input; every decoder layer's cross K/V
    (one product in the graph) reads the encoder's output."""
    enc, dec = model.model.encoder, model.model.decoder
    modules = {}
    for i, layer in enumerate(enc.layers):
        modules.update({f"enc.{i}.self.qkv.w": layer.self_attn.q_proj, f"enc.{i}.self.o.w": layer.self_attn.out_proj,
                        f"enc.{i}.fc1.w": layer.fc1, f"enc.{i}.fc2.w": layer.fc2})
    modules["enc.cross_kv.w"] = dec.layers[0].encoder_attn.k_proj
    for i, layer in enumerate(dec.layers):
        modules.update({f"dec.{i}.self.qkv.w": layer.self_attn.q_proj, f"dec.{i}.self.o.w": layer.self_attn.out_proj,
                        f"dec.{i}.cross.q.w": layer.encoder_attn.q_proj,
                        f"dec.{i}.cross.o.w": layer.encoder_attn.out_proj,
                        f"dec.{i}.fc1.w": layer.fc1, f"dec.{i}.fc2.w": layer.fc2})
    modules[OUTPUT_PROJECTION] = model.get_output_embeddings()
    return modules


def activation_ranges(model, tokenizer, sentences: Sequence[str], batch_size: int = 16) -> dict[str, list[float]]:
    """{weight name: [min, max]} of each product's input over the real (not padding) positions of
    `sentences` and of the model's greedy translations of them, teacher-forced; 0 is always
    inside a range (it is the padding value, and the zero point must be exact)."""
    import torch

    from wdctl.passes.batching import length_sorted_batches
    from wdctl.passes.translate import generate_limited

    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise ValueError("activation ranges need at least one non-empty calibration sentence")
    modules = product_inputs(model)
    lo = {name: 0.0 for name in modules}
    hi = {name: 0.0 for name in modules}
    keep = {}  # "enc" / "dec" -> boolean mask of the real positions of the pass being measured

    def hook_for(name):
        side = "enc" if name.startswith("enc.") else "dec"

        def hook(module, args):
            if not keep:  # the search's own passes are not measured
                return
            x = args[0][keep[side]]
            if x.numel():
                lo[name] = min(lo[name], float(x.min()))
                hi[name] = max(hi[name], float(x.max()))
        return hook

    pad = model.config.pad_token_id
    limit = min(256, tokenizer.model_max_length)
    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with torch.inference_mode():
            for idx in length_sorted_batches(sentences, batch_size):
                enc = tokenizer([sentences[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                max_length=limit)
                keep.clear()
                out = generate_limited(model, enc["input_ids"], enc["attention_mask"], 1, limit)
                real = out != pad
                real[:, 0] = True  # the decoder start token (Marian's is <pad>)
                keep.update(enc=enc["attention_mask"].bool(), dec=real)
                model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=out,
                      decoder_attention_mask=real.long())
    finally:
        for handle in handles:
            handle.remove()
    return {name: [round(lo[name], 6), round(hi[name], 6)] for name in modules}


def ranges_metadata(ranges: dict[str, list[float]]) -> str:
    return json.dumps(ranges, sort_keys=True, separators=(",", ":"))


def read_ranges(model_proto) -> dict[str, list[float]] | None:
    """The ranges recorded in a translator's metadata, or None (a file from before them)."""
    for prop in model_proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None
