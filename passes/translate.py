"""Batched translation with a PyTorch MarianMTModel (dev BLEU, distilled data, `wdctl translate`)."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from wdctl.core.metrics import bleu, score_bleu
from wdctl.passes.batching import length_sorted_batches, output_limit


def count_too_long(tokenizer, sentences: list[str], limit: int) -> int:
    """How many (non-empty) inputs exceed `limit` source tokens and will be cut to it."""
    texts = [s for s in sentences if s.strip()]
    return sum(len(ids) > limit for ids in tokenizer(texts)["input_ids"]) if texts else 0


class RowLengthLimit(LogitsProcessor):
    """transformers' forced EOS at max_length - 1 (`ForcedEOSTokenLogitsProcessor`: EOS log-prob 0,
    every other token -inf), but at each row's own limit: a row whose length (decoder start token
    included) reaches its limit - 1 can only end. `limits` holds one limit per sentence; with beam
    search the rows are sentence-major (transformers repeats each sentence's inputs over its
    beams with repeat_interleave), so each limit is repeated over the beams."""

    def __init__(self, limits: torch.Tensor, eos_token_id: int, num_beams: int = 1):
        self.limits = limits.repeat_interleave(num_beams) if num_beams > 1 else limits
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        at_limit = input_ids.shape[-1] >= self.limits.to(scores.device) - 1
        if not bool(at_limit.any()):
            return scores
        forced = torch.full_like(scores[:1], -math.inf)
        forced[:, self.eos_token_id] = 0
        return torch.where(at_limit[:, None], forced, scores)


def row_limits(attention_mask: torch.Tensor, max_length: int) -> torch.Tensor:
    """Each sentence's output limit: min(max_length, `output_limit` of its own source length,
    padding excluded)."""
    lengths = attention_mask.sum(dim=1).tolist()
    return torch.tensor([output_limit(int(n), max_length) for n in lengths], dtype=torch.long)


def generate_limited(model, input_ids, attention_mask, num_beams: int, max_length: int, **generate_kwargs):
    """`model.generate` with each sentence's own output limit (`row_limits`): generate's own
    max_length is the batch's largest limit, and `RowLengthLimit` ends the other rows at theirs,
    so a sentence's output does not depend on the other sentences of its batch. With one
    sentence this is exactly generate(max_length=its limit)."""
    limits = row_limits(attention_mask, max_length)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    if eos is None:
        eos = model.config.eos_token_id
    processors = LogitsProcessorList([RowLengthLimit(limits, int(eos), num_beams)])
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams,
                          max_length=int(limits.max()), logits_processor=processors, **generate_kwargs)


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

    Empty input lines give empty output lines, so alignment with the input is kept. Each
    sentence's output is at most min(max_length, `output_limit` of its own source) long
    (`generate_limited`), whatever its batch.
    """
    model.eval()
    out = [""] * len(sentences)
    for idx in tqdm(length_sorted_batches(sentences, batch_size), desc="translate", unit="batch",
                    disable=not progress):
        enc = tokenizer([sentences[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                        max_length=min(max_length, tokenizer.model_max_length)).to(model.device)
        extra = {"early_stopping": True, "length_penalty": length_penalty} if beams > 1 else {}
        generated = generate_limited(model, enc["input_ids"], enc["attention_mask"], beams, max_length, **extra)
        for i, text in zip(idx, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            out[i] = text
    return out


def torch_bleu(model, tokenizer, pairs: list[tuple[str, str]], beams: list[int], prefix: str,
               progress: bool = False) -> dict:
    """`score_bleu` of `translate_torch` (batches of 64) on `pairs`: how compress, teacher training
    and the results scripts score a PyTorch model."""
    def translate(sentences: list[str], b: int) -> list[str]:
        return translate_torch(model, tokenizer, sentences, beams=b, batch_size=64, progress=progress)

    return score_bleu(translate, pairs, beams, prefix)


def dev_bleu_evaluator(tokenizer, dev_pairs, beams: int = 1, batch_size: int = 64):
    """`evaluate(model) -> {"dev_bleu": ...}` over `dev_pairs`: the training loop's dev check."""
    sources, references = [s for s, _ in dev_pairs], [t for _, t in dev_pairs]

    def evaluate(model) -> dict:
        hyps = translate_torch(model, tokenizer, sources, beams=beams, batch_size=batch_size)
        return {"dev_bleu": bleu(hyps, references).score}

    return evaluate
