"""Joint subword vocabulary in the OPUS-MT layout, and encoding of sentence pairs.

Layout (what opus-mt models, optimum and CTranslate2's Marian converter expect):
`</s>` = 0, `<unk>` = 1, SentencePiece pieces, then `<pad>` as the last id, which is also
the decoder start token. The same SentencePiece model serves source and target.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import sentencepiece as spm
from transformers import MarianTokenizer

from wdctl.core.corpus import Pair

log = logging.getLogger(__name__)

EOS, UNK, PAD = "</s>", "<unk>", "<pad>"


def train_vocabulary(pairs: list[Pair], out_dir: Path, vocab_size: int, seed: int = 1) -> MarianTokenizer:
    """Train a unigram SentencePiece model on both sides and write a MarianTokenizer directory.

    `vocab_size` counts every id including `<pad>`; on small corpora it is a soft limit.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    text = [s for pair in pairs for s in pair]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size - 1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        eos_id=0,
        unk_id=1,
        bos_id=-1,
        pad_id=-1,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=1,  # deterministic pieces for a given seed
        minloglevel=2,
    )
    proto = model.getvalue()
    for name in ("source.spm", "target.spm"):
        (out_dir / name).write_bytes(proto)
    processor = spm.SentencePieceProcessor(model_proto=proto)
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    vocab[PAD] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(
        source_spm=str(out_dir / "source.spm"),
        target_spm=str(out_dir / "target.spm"),
        vocab=str(out_dir / "vocab.json"),
        model_max_length=512,
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Token ids (with `</s>`) for every pair, cut at `max_length`; returns (examples, n_truncated)."""
    sources = tokenizer([s for s, _ in pairs])["input_ids"]
    targets = tokenizer(text_target=[t for _, t in pairs])["input_ids"]
    examples, truncated = [], 0
    for src, tgt in zip(sources, targets):
        if len(src) > max_length or len(tgt) > max_length:
            truncated += 1
            src, tgt = src[: max_length - 1] + [src[-1]], tgt[: max_length - 1] + [tgt[-1]]
        examples.append((src, tgt))
    if truncated:
        log.warning("%d sentence pair(s) longer than %d tokens were truncated", truncated, max_length)
    return examples, truncated
