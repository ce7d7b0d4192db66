"""A lexical shortlist: the target pieces a search may emit for a given source.

Marian ships one with every student (`--shortlist`) and CTranslate2 reads one as a vocabulary
mapping (`use_vmap`): the most frequent target pieces, plus, for each source piece, the target
pieces its translations use most. The output layer then multiplies only those rows.

wdctl builds it from the pairs it trains on (original ∪ teacher translations), without an
aligner: for each source piece s and target piece t, how often t occurs in the translation of
a sentence containing s (sentence-level co-occurrence, counted once per sentence), ranked by
c(s, t) / c(s). The frequent pieces are always kept, so each source piece's list holds its
best *other* candidates. A batch's shortlist is the union over its source pieces, plus the
frequent pieces and the special ids (`Shortlist.candidates`).

Stored as JSON (`shortlist.json`) and written for CTranslate2 as a vocabulary mapping
(`vmap.txt`: `SOURCE_PIECE<TAB>target pieces…`, the empty source piece for the frequent ones).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wdctl.core.atomic import atomic_write_text
from wdctl.core.errors import InputError

DEFAULT_FREQUENT = 256
DEFAULT_PER_SOURCE = 32
FILE = "shortlist.json"  # in a MarianMT directory (written by `wdctl compress` / `wdctl shortlist`) and a package
VMAP_FILE = "vmap.txt"  # in a package: CTranslate2's --vocab_mapping
SIZE_SENTENCES = 16  # a search's sentences the translator's shortlist size is chosen for (greedy, 16 rows)
SIZE_QUANTILE = 0.95


@dataclass(frozen=True)
class Shortlist:
    vocab_size: int
    frequent: tuple[int, ...]  # target ids always kept, most frequent first
    per_source: dict[int, tuple[int, ...]]  # source id -> its best other target ids, best first
    size: int = 0  # positions the in-graph translator keeps per search (`choose_size`); 0: not chosen

    def candidates(self, source_ids: Iterable[int], always: Iterable[int] = (), multiple_of: int = 8) -> np.ndarray:
        """Sorted target ids for a batch with these source ids: the frequent ids, each source id's
        list and `always` (special ids), padded with the next frequent-order ids to a multiple of
        `multiple_of` (the product's rows stay aligned for the kernels)."""
        keep = set(self.frequent) | set(always)
        for s in set(int(i) for i in source_ids):
            keep.update(self.per_source.get(s, ()))
        if len(keep) % multiple_of:
            for t in range(self.vocab_size):  # pad with the lowest ids not yet kept
                if t not in keep:
                    keep.add(t)
                    if len(keep) % multiple_of == 0:
                        break
        return np.array(sorted(keep), dtype=np.int64)

    def to_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "size": self.size, "frequent": list(self.frequent),
                "per_source": {str(s): list(t) for s, t in sorted(self.per_source.items())}}

    @classmethod
    def from_dict(cls, data: dict, where: str = "shortlist") -> "Shortlist":
        try:
            vocab = int(data["vocab_size"])
            frequent = tuple(int(t) for t in data["frequent"])
            per_source = {int(s): tuple(int(t) for t in ts) for s, ts in data["per_source"].items()}
            size = int(data.get("size", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where}: not a wdctl shortlist ({exc})") from None
        ids = [*frequent, *(t for ts in per_source.values() for t in ts)]
        if any(not 0 <= t < vocab for t in ids):
            raise InputError(f"{where}: target id outside the vocabulary of {vocab}")
        if not 0 <= size <= vocab:
            raise InputError(f"{where}: size {size} outside [0, {vocab}]")
        return cls(vocab, frequent, per_source, size)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> "Shortlist":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable shortlist ({exc})") from None
        return cls.from_dict(data, str(path))

    def write_vmap(self, path: Path, source_pieces: Sequence[str], target_pieces: Sequence[str] | None = None) -> None:
        """CTranslate2's vocabulary mapping for `translate_batch(..., use_vmap=True)`; `target_pieces`
        default to `source_pieces` (a shared vocabulary, as Marian's)."""
        target_pieces = source_pieces if target_pieces is None else target_pieces
        lines = ["\t" + " ".join(target_pieces[t] for t in self.frequent)]
        lines += [f"{source_pieces[s]}\t{' '.join(target_pieces[t] for t in ts)}"
                  for s, ts in sorted(self.per_source.items()) if ts]
        atomic_write_text(Path(path), "\n".join(lines) + "\n")


def _presence(rows: Sequence[Sequence[int]], size: int) -> torch.Tensor:
    """(sentences, size) sparse 0/1 matrix: which ids occur in each row."""
    index = [(i, t) for i, row in enumerate(rows) for t in set(row)]
    if not index:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (len(rows), size),
                                       check_invariants=True)
    ij = torch.tensor(index, dtype=torch.long).T
    return torch.sparse_coo_tensor(ij, torch.ones(ij.shape[1]), (len(rows), size), check_invariants=True).coalesce()


def build_shortlist(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], source_vocab: int, target_vocab: int, *,
                    frequent: int = DEFAULT_FREQUENT, per_source: int = DEFAULT_PER_SOURCE,
                    exclude: Iterable[int] = ()) -> Shortlist:
    """The shortlist of (source ids, target ids) pairs: the `frequent` most frequent target ids
    (by token count) and, per source id, the `per_source` other target ids with the highest
    c(s, t) / c(s). `exclude` (e.g. pad) never enters a list."""
    if frequent < 0 or per_source < 0:
        raise InputError("shortlist sizes must be >= 0")
    exclude = set(exclude)
    counts = np.bincount([t for _, tgt in pairs for t in tgt], minlength=target_vocab)[:target_vocab].astype(np.float64)
    counts[list(exclude)] = -1
    order = np.argsort(-counts, kind="stable")
    kept = tuple(int(t) for t in order[:frequent] if counts[t] > 0)
    src = _presence([s for s, _ in pairs], source_vocab)
    tgt = _presence([t for _, t in pairs], target_vocab)
    with warnings.catch_warnings():  # torch calls its sparse CSR kernels "beta"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        cooc = torch.sparse.mm(src.T.coalesce(), tgt).coalesce()  # (source_vocab, target_vocab) counts
    s_ids, t_ids = cooc.indices()
    values = cooc.values().numpy()
    banned = np.zeros(target_vocab, dtype=bool)
    banned[[*kept, *exclude]] = True
    lists: dict[int, tuple[int, ...]] = {}
    s_np, t_np = s_ids.numpy(), t_ids.numpy()
    # rank within each source row: by count (c(s) is the same for the whole row), then target frequency
    order = np.lexsort((-counts[t_np], -values, s_np))
    s_np, t_np = s_np[order], t_np[order]
    starts = np.flatnonzero(np.r_[True, s_np[1:] != s_np[:-1]])
    ends = np.r_[starts[1:], len(s_np)]
    for a, b in zip(starts, ends):
        row = [int(t) for t in t_np[a:b] if not banned[t]][:per_source]
        if row:
            lists[int(s_np[a])] = tuple(row)
    return Shortlist(target_vocab, kept, lists)


def choose_size(shortlist: Shortlist, sources: Sequence[Sequence[int]], always: Iterable[int] = (), *,
                sentences: int = SIZE_SENTENCES, quantile: float = SIZE_QUANTILE, multiple_of: int = 64) -> int:
    """The translator's shortlist size (fixed when its file is built: the search op reads the
    vocabulary size from the graph): the `quantile` of the union's size over searches of
    `sentences` consecutive `sources` of similar length (as `PackageTranslator` groups them),
    rounded up to `multiple_of`, at most the vocabulary. A larger union is cut to this size by
    score (`translator_graph._shortlist_nodes`), dropping the weakest candidates first."""
    sources = sources[:: max(1, len(sources) // 4000)]  # a sample is enough for a quantile
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    sizes = [len(shortlist.candidates((t for i in order[k:k + sentences] for t in sources[i]), always, 1))
             for k in range(0, len(order), sentences)]
    floor = len(set(shortlist.frequent) | set(always)) + 8  # room for candidates beyond the pinned ids
    size = max(int(np.quantile(sizes, quantile)) if sizes else 0, floor)
    return min(shortlist.vocab_size, -(-size // multiple_of) * multiple_of)


def shortlist_for(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], vocab_size: int, special_ids: Iterable[int],
                  pad_token_id: int, **sizes) -> Shortlist:
    """`build_shortlist` over encoded (source, target) pairs with its translator size chosen on
    their sources (`choose_size`): what `wdctl compress` and `wdctl shortlist` write."""
    built = build_shortlist(pairs, vocab_size, vocab_size, exclude=[pad_token_id], **sizes)
    return dataclasses.replace(built, size=choose_size(built, [s for s, _ in pairs], special_ids))


def coverage(shortlist: Shortlist, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int,
             always: Iterable[int] = (), multiple_of: int = 8) -> dict:
    """How well the shortlist serves `pairs` decoded `batch_size` at a time: the share of target
    tokens inside their batch's shortlist, and the mean and largest shortlist size."""
    always = tuple(always)
    covered = total = 0
    sizes = []
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i : i + batch_size]
        keep = shortlist.candidates((s for src, _ in batch for s in src), always, multiple_of)
        sizes.append(len(keep))
        members = np.zeros(shortlist.vocab_size, dtype=bool)
        members[keep] = True
        for _, tgt in batch:
            covered += int(members[list(tgt)].sum())
            total += len(tgt)
    return {"token_coverage": covered / max(total, 1), "mean_size": float(np.mean(sizes)) if sizes else 0.0,
            "max_size": max(sizes, default=0), "batch_size": batch_size, "batches": len(sizes)}
