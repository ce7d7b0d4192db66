"""Batched translation with a PyTorch MarianMTModel (dev BLEU, distilled data, `wdctl translate`)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def count_too_long(tokenizer, sentences: list[str], limit: int) -> int:
    """How many (non-empty) inputs exceed `limit` source tokens and will be cut to it."""
    texts = [s for s in sentences if s.strip()]
    return sum(len(ids) > limit for ids in tokenizer(texts)["input_ids"]) if texts else 0


def output_limit(source_tokens: int) -> int:
    """Longest output worth decoding for a source of this length (fairseq's max_len_a/b idea):
    keeps an untrained or looping model from always running to the model's maximum."""
    return int(1.5 * source_tokens) + 10


@torch.inference_mode()
def translate_torch(
    model,
    tokenizer,
    sentences: list[str],
    beams: int = 4,
    batch_size: int = 32,
    max_length: int = 256,
    length_penalty: float = 1.0,
    progress: bool = False,
) -> list[str]:
    """Translate in length-sorted batches (less padding) and return hypotheses in input order.

    Empty input lines give empty output lines, so alignment with the input is kept.
    """
    model.eval()
    order = sorted((i for i, s in enumerate(sentences) if s.strip()), key=lambda i: len(sentences[i]))
    out = [""] * len(sentences)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="translate", unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        enc = tokenizer([sentences[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                        max_length=min(max_length, tokenizer.model_max_length)).to(model.device)
        limit = min(max_length, output_limit(enc["input_ids"].shape[1]))
        extra = {"early_stopping": True, "length_penalty": length_penalty} if beams > 1 else {}
        generated = model.generate(**enc, num_beams=beams, max_length=limit, **extra)
        for i, text in zip(idx, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            out[i] = text
    return out
