"""Reading parallel corpora with one clear error per problem.

Three ways to name data, everywhere in the CLI:
- a directory holding `{split}.*.tsv[.gz]` files (the bundled `examples/data/bible`);
- a TSV file, `source<TAB>target` per line;
- two line-aligned text files joined by a comma: `train.en,train.es`.
Files may be gzip-compressed (`.gz`). Problems raise `InputError` naming file and line.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from wdctl.core.errors import InputError

Pair = tuple[str, str]


def _open_binary(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_lines(path: Path | str, allow_empty: bool = True) -> list[str]:
    """All lines of a UTF-8 text file, without line ends; empty lines kept unless refused.

    Lines are decoded one by one so an encoding error names its line.
    """
    path = Path(path)
    lines: list[str] = []
    with _open_binary(path) as f:
        try:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
                except UnicodeDecodeError as exc:
                    raise InputError(f"{path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
                if not allow_empty and not line.strip():
                    raise InputError(f"{path}:{number}: empty line")
                lines.append(line)
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: cannot read ({exc})") from None
    return lines


def read_tsv(path: Path | str) -> list[Pair]:
    path = Path(path)
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        columns = line.split("\t")
        if len(columns) != 2:
            raise InputError(
                f"{path}:{number}: expected 2 tab-separated columns (source, target), found {len(columns)}"
            )
        pairs.append(_checked_pair(columns[0], columns[1], f"{path}:{number}"))
    return _non_empty(pairs, path)


def read_aligned(source: Path | str, target: Path | str) -> list[Pair]:
    source, target = Path(source), Path(target)
    src, tgt = read_lines(source), read_lines(target)
    if len(src) != len(tgt):
        raise InputError(f"{source} has {len(src)} lines but {target} has {len(tgt)}: line counts must match")
    pairs = [_checked_pair(s, t, f"{source},{target} line {i}") for i, (s, t) in enumerate(zip(src, tgt), 1)]
    return _non_empty(pairs, source)


def _checked_pair(source: str, target: str, where: str) -> Pair:
    if not source.strip():
        raise InputError(f"{where}: empty source side")
    if not target.strip():
        raise InputError(f"{where}: empty target side")
    return source.strip(), target.strip()


def _non_empty(pairs: list[Pair], path: Path) -> list[Pair]:
    if not pairs:
        raise InputError(f"{path}: empty corpus (no sentence pairs)")
    return pairs


def read_parallel(spec: Path | str, split: str = "train") -> list[Pair]:
    """Read the pairs named by `spec` (directory, TSV, or `SRC,TGT`); see the module docstring."""
    spec = str(spec)
    if "," in spec:
        source, target = spec.split(",", 1)
        return read_aligned(source, target)
    path = Path(spec)
    if path.is_dir():
        return read_tsv(split_file(path, split))
    return read_tsv(path)


def split_file(directory: Path, split: str) -> Path:
    """The TSV of `split` inside a corpus directory such as examples/data/bible."""
    matches = sorted(directory.glob(f"{split}.*tsv*")) or sorted(directory.glob(f"{split}.tsv*"))
    if not matches:
        raise InputError(f"{directory}: no {split}.*.tsv or {split}.*.tsv.gz file in this corpus directory")
    return matches[0]


def require_pairs(pairs: list[Pair], minimum: int, what: str) -> list[Pair]:
    if len(pairs) < minimum:
        raise InputError(f"{what}: {len(pairs)} sentence pair(s); at least {minimum} are needed")
    return pairs


def optional_split(data: str | Path, split: str) -> list[Pair] | None:
    """A corpus directory's `split` if it has one; None for files and directories without it."""
    path = Path(data)
    if not path.is_dir() or not (list(path.glob(f"{split}.*tsv*")) or list(path.glob(f"{split}.tsv*"))):
        return None
    return read_parallel(path, split)
