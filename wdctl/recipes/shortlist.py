"""`wdctl shortlist`: a model's vocabulary shortlist from parallel data (`passes.shortlist`),
written into the model directory as `shortlist.json`, where `wdctl export` finds it.
`wdctl compress` writes one for every student from the pairs it trained on."""

from __future__ import annotations

from pathlib import Path

from wdctl.core.corpus import read_parallel
from wdctl.core.errors import InputError
from wdctl.passes.shortlist import DEFAULT_FREQUENT, DEFAULT_PER_SOURCE, FILE, Shortlist, shortlist_for

MAX_LENGTH = 256


def model_shortlist(tokenizer, examples, *, frequent: int = DEFAULT_FREQUENT,
                    per_source: int = DEFAULT_PER_SOURCE) -> Shortlist:
    """The shortlist of a model's encoded (source ids, target ids) training pairs."""
    special = [tokenizer.pad_token_id, tokenizer.eos_token_id]
    return shortlist_for(examples, len(tokenizer), special, tokenizer.pad_token_id, frequent=frequent,
                         per_source=per_source)


def write_shortlist(model_dir: Path, data: str, *, translations: list[str] = (), split: str = "train",
                    frequent: int = DEFAULT_FREQUENT, per_source: int = DEFAULT_PER_SOURCE,
                    out: Path | None = None, force: bool = False) -> tuple[Path, Shortlist, int]:
    """Build the shortlist of `model_dir` from `data` (its `split`) and any `translations`
    (more pairs, e.g. the model's own outputs: `wdctl compress`'s distillation cache) and write
    it (default: MODEL_DIR/shortlist.json). Returns (path, shortlist, pairs used)."""
    from wdctl.passes.marian import load_marian
    from wdctl.passes.vocab import encode_pairs

    out = Path(out) if out is not None else Path(model_dir) / FILE
    if out.exists() and not force:
        raise InputError(f"{out}: exists (use --force to replace it)")
    pairs = list(read_parallel(data, split))
    for extra in translations:
        pairs += read_parallel(extra)
    if not pairs:
        raise InputError(f"{data}: no sentence pairs")
    _, tokenizer = load_marian(model_dir)
    examples, _ = encode_pairs(tokenizer, list(dict.fromkeys(pairs)), MAX_LENGTH)
    shortlist = model_shortlist(tokenizer, examples, frequent=frequent, per_source=per_source)
    shortlist.save(out)
    return out, shortlist, len(examples)
