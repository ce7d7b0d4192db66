"""Build the bundled English–Spanish corpus: KJV (1769) aligned verse by verse with the
Reina-Valera 1909, both public domain, from Debian's SWORD modules.

`wdctl data bible` runs this (root and apt needed); the result is committed under
`examples/data/bible/` so nobody else needs apt.

Alignment: both modules use the KJV versification, but in about 35 chapters the Spanish
module follows Spanish chapter breaks, leaving empty verses and gluing overflow verses onto a
chapter's last verse. Both modules tag words with Strong's numbers, so a verse is checked by
comparing its Strong's numbers with those of its Spanish namesake and of the neighbouring
Spanish verses: a chapter is dropped when any verse is empty on either side or matches a
neighbour better than itself.
"""

from __future__ import annotations

import gzip
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wdctl.core.atomic import atomic_dir
from wdctl.core.errors import WdctlError

MODULES = {"en": "engKJV2006eb", "es": "spaRV1909eb"}
DEBIAN_PACKAGES = ["libsword-utils", "sword-text-kjv", "sword-text-sparv"]
SPLIT_SEED = 1234
HELDOUT_SIZE = 1000

_VERSE_HEADER = re.compile(r"^\$\$\$(.+?) (\d+):(\d+)$")
_DROPPED_ELEMENTS = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]+>")
_STRONG = re.compile(r"strong:([HG])0*(\d+)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)])")
_SPACE_AFTER_OPENING = re.compile(r"([¿¡(])\s+")


@dataclass(frozen=True)
class Verse:
    ref: str
    text: str
    strongs: frozenset[str]


def clean_markup(raw: str) -> str:
    """OSIS markup → plain text: drop notes and headings, keep word content, remove ¶."""
    text = _DROPPED_ELEMENTS.sub(" ", raw)
    text = _TAG.sub(" ", text)
    text = text.replace("¶", " ").replace("\\nd", " ")
    text = " ".join(text.split())
    return _SPACE_AFTER_OPENING.sub(r"\1", _SPACE_BEFORE_PUNCT.sub(r"\1", text))


def parse_imp(dump: str) -> dict[tuple[str, int, int], Verse]:
    """Parse `mod2imp` output into verses keyed by (book, chapter, verse); verse 0 skipped."""
    verses: dict[tuple[str, int, int], Verse] = {}
    key = None
    for line in dump.splitlines():
        m = _VERSE_HEADER.match(line)
        if m:
            book, ch, vs = m.group(1), int(m.group(2)), int(m.group(3))
            key = (book, ch, vs) if ch > 0 and vs > 0 else None
            continue
        if key is None or line.startswith("$$$"):
            key = None if line.startswith("$$$") else key
            continue
        prev = verses.get(key)
        raw = (prev.text + " " if prev else "") + line
        strongs = frozenset(f"{a}{b}" for a, b in _STRONG.findall(line))
        verses[key] = Verse(
            ref=f"{key[0]} {key[1]}:{key[2]}",
            text=clean_markup(raw) if not prev else clean_markup(prev.text + " " + line),
            strongs=(prev.strongs | strongs) if prev else strongs,
        )
    return verses


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def aligned_pairs(
    en: dict[tuple[str, int, int], Verse], es: dict[tuple[str, int, int], Verse]
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Return (ref, en, es) for every verse of a well-aligned chapter, and the dropped chapters."""
    chapters: dict[tuple[str, int], list[int]] = {}
    for book, ch, vs in en:
        chapters.setdefault((book, ch), []).append(vs)
    pairs, dropped = [], []
    for (book, ch), numbers in chapters.items():
        numbers.sort()
        ok = True
        for vs in numbers:
            e, s = en[(book, ch, vs)], es.get((book, ch, vs))
            if s is None or not e.text or not s.text:
                ok = False
                break
            own = _jaccard(e.strongs, s.strongs)
            for nb in ((book, ch, vs - 1), (book, ch, vs + 1), (book, ch - 1, vs), (book, ch + 1, 1)):
                other = es.get(nb)
                if other is not None and e.strongs and _jaccard(e.strongs, other.strongs) > own:
                    ok = False
                    break
            if not ok:
                break
        if not ok:
            dropped.append(f"{book} {ch}")
            continue
        pairs.extend((en[(book, ch, v)].ref, en[(book, ch, v)].text, es[(book, ch, v)].text) for v in numbers)
    return pairs, dropped


def split_pairs(
    pairs: list[tuple[str, str, str]], seed: int = SPLIT_SEED, heldout: int = HELDOUT_SIZE
) -> dict[str, list[tuple[str, str, str]]]:
    """Deduplicate exact pairs, draw dev and test at random (fixed seed), then drop from train
    every pair whose source sentence appears in dev or test."""
    seen, unique = set(), []
    for p in pairs:
        if (p[1], p[2]) not in seen:
            seen.add((p[1], p[2]))
            unique.append(p)
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    dev = [unique[i] for i in order[:heldout]]
    test = [unique[i] for i in order[heldout : 2 * heldout]]
    held_sources = {p[1] for p in dev + test}
    train = [unique[i] for i in sorted(order[2 * heldout :]) if unique[i][1] not in held_sources]
    return {"train": train, "dev": sorted(dev, key=unique.index), "test": sorted(test, key=unique.index)}


def write_split(directory: Path, name: str, rows: list[tuple[str, str, str]]) -> None:
    """`NAME.en-es.tsv.gz` (source<TAB>target) and `NAME.ref.gz` (verse reference per line)."""
    with gzip.open(directory / f"{name}.en-es.tsv.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        f.writelines(f"{en}\t{es}\n" for _, en, es in rows)
    with gzip.open(directory / f"{name}.ref.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        f.writelines(f"{ref}\n" for ref, _, _ in rows)


def dump_module(module: str) -> str:
    if shutil.which("mod2imp") is None:
        raise WdctlError(
            "mod2imp not found: install it with `apt-get install --no-install-recommends "
            + " ".join(DEBIAN_PACKAGES)
            + "` (needs root), or use the corpus already in examples/data/bible/"
        )
    result = subprocess.run(["mod2imp", module], capture_output=True, text=True, check=False)
    if result.returncode != 0 or "$$$" not in result.stdout:
        raise WdctlError(f"mod2imp {module} failed: is the Debian package for {module} installed?")
    return result.stdout


def build_bible_corpus(out: Path, force: bool = False) -> dict[str, int]:
    """Dump both modules, align, split and write the corpus; return split sizes and drops."""
    en = parse_imp(dump_module(MODULES["en"]))
    es = parse_imp(dump_module(MODULES["es"]))
    pairs, dropped = aligned_pairs(en, es)
    splits = split_pairs(pairs)
    with atomic_dir(out, force=force) as tmp:
        write_split(tmp, "all", pairs)
        for name, rows in splits.items():
            write_split(tmp, name, rows)
        (tmp / "DROPPED_CHAPTERS.txt").write_text("\n".join(dropped) + "\n", encoding="utf-8")
    return {"verses": len(en), "aligned": len(pairs), "dropped_chapters": len(dropped)} | {
        k: len(v) for k, v in splits.items()
    }
