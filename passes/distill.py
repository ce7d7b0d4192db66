"""Distilled data (sequence-level KD): the teacher translates the training source side.

`distill` runs the teacher over every training source sentence with beam search, in batches,
and caches the hypotheses on disk under a key that hashes

- the teacher directory (every file: weights, config, tokenizer),
- the source sentences (in order),
- the decoding settings (beams, length penalty, max length, the per-sentence output limit
  rule of `passes.batching`, backend),

so a rerun — or another student distilled from the same teacher and data — reuses them. The
translation is done in chunks, each written atomically as soon as it is finished: an
interrupted run (Ctrl-C) keeps its finished chunks and resumes after them. Under `torchrun`
the chunks are dealt out to the ranks (rank r takes every world-th one). When all chunks are
done, rank 0 joins them into one `distilled-KEY.tsv` (source<TAB>hypothesis, written
atomically) next to a `distilled-KEY.json` that records what was hashed.

Backends: the teacher translates through a `TeacherBackend`: `TorchTeacher` (PyTorch beam
search, the default), or any other one the caller passes, such as
`wdctl.export.build.OnnxTeacher` (the teacher's ONNX export, made once into the cache, run by
onnxruntime). The backend's `name` is part of the cache key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from tqdm.auto import tqdm

from wdctl.core.atomic import atomic_write_text
from wdctl.core.corpus import Pair
from wdctl.core.errors import InputError, WdctlError
from wdctl.passes import shortlist
from wdctl.passes.batching import output_limit_rule
from wdctl.passes.distributed import distributed
from wdctl.passes.marian import load_marian
from wdctl.passes.translate import translate_torch

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CHUNK_SIZE = 512  # sentences per resumable chunk
_BLOCK = 1 << 20
NOT_TRANSLATION_INPUTS = {shortlist.FILE, shortlist.VMAP_FILE}  # distillation searches the full vocabulary


@dataclass(frozen=True)
class DistillResult:
    pairs: list[Pair]  # (source, teacher hypothesis); pairs whose hypothesis came out empty are dropped
    path: Path  # the cache file
    reused: bool  # True when nothing had to be translated in this call
    translated: int  # sentences translated in this call
    seconds: float
    backend: str

    def training_pairs(self, original: list[Pair]) -> list[Pair]:
        """What the student trains on: the original pairs ∪ the teacher's, order kept, each once."""
        return list(dict.fromkeys((*original, *self.pairs)))


def teacher_fingerprint(teacher_dir: Path | str) -> str:
    """sha256 over the names and bytes of the teacher directory's (non-hidden) files, except
    those that do not change its translations (`NOT_TRANSLATION_INPUTS`: a shortlist written
    into the directory later must not orphan its distillation caches)."""
    teacher_dir = Path(teacher_dir)
    digest = hashlib.sha256()
    files = sorted(p for p in teacher_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name not in NOT_TRANSLATION_INPUTS)
    if not any(p.name == "model.safetensors" for p in files):
        raise InputError(f"{teacher_dir}: no model.safetensors")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def cache_key(teacher_hash: str, sources: list[str], settings: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, "teacher": teacher_hash, "settings": settings},
                             sort_keys=True).encode())
    for s in sources:
        digest.update(s.encode("utf-8") + b"\0")
    return digest.hexdigest()[:24]


def _clean(text: str) -> str:
    """One line, no tabs: hypotheses are stored one per line in a TSV."""
    return " ".join(text.replace("\t", " ").split())


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


class Translator(Protocol):
    def translate(self, sentences: Sequence[str], beams: int, batch_size: int, max_length: int,
                  length_penalty: float) -> list[str]: ...


class TeacherBackend(Protocol):
    """How the teacher translates. `name` goes into the cache key; `prepare` runs once, on
    rank 0, before any chunk is translated (e.g. an export into `workdir`, a directory of the
    cache kept for this teacher); `load` is called by each rank that has a chunk to translate."""

    name: str

    def prepare(self, teacher_dir: Path, workdir: Path) -> None: ...

    def load(self, teacher_dir: Path, workdir: Path, threads: int, device) -> Translator: ...


class TorchTeacher:
    """The teacher in PyTorch (`translate_torch`), on this rank's device."""

    name = "torch"

    def prepare(self, teacher_dir: Path, workdir: Path) -> None:
        pass

    def load(self, teacher_dir: Path, workdir: Path, threads: int, device) -> Translator:
        return _TorchTranslator(teacher_dir, device)


class _TorchTranslator:
    def __init__(self, teacher_dir: Path, device):
        self.model, self.tokenizer = load_marian(teacher_dir)
        self.model.to(device)  # translate_torch follows the model's device

    def translate(self, sentences, beams, batch_size, max_length, length_penalty) -> list[str]:
        return translate_torch(self.model, self.tokenizer, sentences, beams=beams, batch_size=batch_size,
                               max_length=max_length, length_penalty=length_penalty)


def distill(
    teacher_dir: Path | str,
    pairs: list[Pair],
    cache_dir: Path | str,
    *,
    beams: int = 4,
    batch_size: int = 32,
    max_length: int = 256,
    length_penalty: float = 1.0,
    backend: TeacherBackend | None = None,
    threads: int = 1,
    device: str = "cpu",
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
) -> DistillResult:
    """Teacher translations of the source side of `pairs`, from the cache when possible.

    `backend` translates (default `TorchTeacher`); `device` is this rank's device for it
    (`cuda`: this rank's GPU)."""
    if beams < 1 or batch_size < 1 or max_length < 2 or chunk_size < 1:
        raise InputError("distillation: beams and batch size must be >= 1, max length >= 2")
    teacher_dir, cache_dir = Path(teacher_dir), Path(cache_dir)
    dist = distributed()
    started = time.perf_counter()
    backend = backend or TorchTeacher()
    backend_name = backend.name
    sources = [s for s, _ in pairs]
    # each sentence's output limit comes from its own source (`output_limit`, in both backends),
    # so a hypothesis does not depend on the chunk or batch it was translated in; caches from
    # before (a batch-level limit, no "output_limit" here) are not reused
    settings = {"beams": beams, "max_length": max_length, "length_penalty": length_penalty, "backend": backend_name,
                "output_limit": output_limit_rule()}
    teacher_hash = teacher_fingerprint(teacher_dir)
    key = cache_key(teacher_hash, sources, settings)
    final = cache_dir / f"distilled-{key}.tsv"

    translated = 0
    if final.is_file():
        hypotheses = [line.split("\t", 1)[1] for line in _read_lines(final)]
        if len(hypotheses) != len(sources):
            raise WdctlError(f"{final}: corrupt distillation cache ({len(hypotheses)} lines for "
                             f"{len(sources)} sentences); delete it and rerun")
        if dist.is_main:
            tqdm.write(f"distill: reusing {final}")
    else:
        parts = cache_dir / f"distilled-{key}.parts"
        workdir = cache_dir / f"teacher-{backend_name}-{teacher_hash[:24]}"
        if dist.is_main:
            parts.mkdir(parents=True, exist_ok=True)
            backend.prepare(teacher_dir, workdir)
        dist.barrier()
        translator = None
        chunks = [(index, sources[start : start + chunk_size])
                  for index, start in enumerate(range(0, len(sources), chunk_size))]
        mine = chunks[dist.rank :: dist.world]  # under torchrun each rank translates its share of the chunks
        bar = tqdm(total=sum(len(c) for _, c in mine), desc=f"distill[{backend_name}, beam {beams}]", unit="sent",
                   dynamic_ncols=True, disable=not progress or not dist.is_main)
        for index, chunk in mine:
            part = parts / f"chunk-{index:06d}.txt"
            if not (part.is_file() and len(_read_lines(part)) == len(chunk)):
                if translator is None:
                    translator = backend.load(teacher_dir, workdir, threads, dist.device(device))
                out = [_clean(h) for h in translator.translate(chunk, beams, batch_size, max_length, length_penalty)]
                if len(out) != len(chunk):
                    raise WdctlError(f"distill: the {backend_name} backend returned {len(out)} translations "
                                     f"for {len(chunk)} sentences")
                atomic_write_text(part, "".join(h + "\n" for h in out))
                translated += len(chunk)
            bar.update(len(chunk))
        bar.close()
        del translator
        translated = int(dist.sum([translated])[0])
        dist.barrier()  # every chunk is on disk
        hypotheses = [h for index, _ in chunks for h in _read_lines(parts / f"chunk-{index:06d}.txt")]
        if dist.is_main:
            atomic_write_text(final.with_suffix(".json"), json.dumps({
                "teacher_dir": str(teacher_dir.resolve()), "teacher_sha256": teacher_hash,
                "sentences": len(sources), "settings": settings, "cache_version": CACHE_VERSION,
            }, indent=2) + "\n")
            atomic_write_text(final, "".join(f"{_clean(s)}\t{h}\n" for s, h in zip(sources, hypotheses)))
        dist.barrier()  # no rank still reads the chunks
        if dist.is_main:
            shutil.rmtree(parts, ignore_errors=True)

    kept = [(s, h) for s, h in zip(sources, hypotheses) if h.strip()]
    if len(kept) < len(sources):
        log.warning("distill: %d empty teacher translation(s) dropped", len(sources) - len(kept))
    return DistillResult(pairs=kept, path=final, reused=translated == 0, translated=translated,
                         seconds=time.perf_counter() - started, backend=backend_name)


def distilled_pairs(teacher_dir: Path | str, pairs: list[Pair], cache_dir: Path | str, *, beams: int = 4,
                    batch_size: int = 32, length_penalty: float = 1.0, **options) -> list[Pair]:
    """(source, teacher translation) for every training pair; see `distill` for the options."""
    return distill(teacher_dir, pairs, cache_dir, beams=beams, batch_size=batch_size,
                   length_penalty=length_penalty, **options).pairs
