"""Decoding speed at opus-mt scale without real weights (issues 26 and 27): an opus-mt-en-de-shaped
teacher (d 512, 6+6, 58,101 tied pieces) and its SMALL and TINY students with random weights,
each decoding exactly --tokens target tokens per sentence (min length = max length), so every
backend does the same work whatever the weights say:

    .venv/bin/python benchmarks/scale_bench.py --out examples/results/scale [--tokens 32] [--sentences 16]

Rows: onnxruntime int8 with the in-graph search (`translator.onnx`, as `wdctl export` builds it),
without and with a shortlist, and CTranslate2 int8 without and with the same shortlist as its
vocabulary map (`use_vmap`; not for TINY, whose narrow decoder CTranslate2 cannot load), greedy
and beam 4, batch 1 (one sentence a call) and batch 32 (the translator in searches of 16 rows, as
`PackageTranslator` runs it; CTranslate2 one call). Random weights never end a sentence, and the
shortlist is synthetic: the 256 lowest ids plus 32 random ids per source id (real lists overlap
more, so a batch's union here is larger than a real one's). Also: the share of the full-vocabulary
decoder step in its output projection (onnxruntime's profiler, beam 4, batch 1), and
student / teacher ratios. One thread; one timed pass after a warm-up. Writes scale.md and
scale.json to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

SEARCH_ROWS = 16  # PackageTranslator's rows per search


def _models(work: Path) -> dict[str, Path]:
    """Random-weight MarianMT directories: the opus-mt shape and its SMALL and TINY students."""
    import torch
    from test_opus_shape import opus_mt_config

    from wdctl.passes.narrow_marian import build_model
    from wdctl.passes.student import resolve_student, student_config

    teacher = opus_mt_config()
    configs = {"teacher": teacher}
    for preset in ("small", "tiny"):
        configs[preset] = student_config(teacher, resolve_student(preset, teacher))
    paths = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        model = build_model(config).eval()
        paths[name] = work / name
        model.save_pretrained(paths[name])
    return paths


def _shortlist(vocab: int, pad: int, seed: int = 0):
    from wdctl.passes.shortlist import Shortlist

    rng = np.random.default_rng(seed)
    frequent = tuple(t for t in range(1, 258) if t not in (0, pad))[:256]
    per_source = {s: tuple(int(t) for t in rng.choice(np.arange(258, pad), 32, replace=False)) for s in range(vocab)}
    shortlist = Shortlist(vocab, frequent, per_source)
    return shortlist, rng


def _sources(vocab: int, pad: int, sentences: int, length: int, rng) -> list[list[int]]:
    return [[int(t) for t in rng.integers(2, pad, length - 1)] + [0] for _ in range(sentences)]


def _translators(model_dir: Path, shortlist, work: Path) -> dict[str, Path]:
    from wdctl.export.translator import build_translator, marian_weights, quantize_translator
    from wdctl.passes.narrow_marian import model_class
    from transformers import MarianConfig

    config = MarianConfig.from_pretrained(model_dir)
    model = model_class(config).from_pretrained(model_dir).eval()
    weights = marian_weights(model)
    files = {}
    for name, kwargs in (("full", {}), ("shortlist", {"shortlist": shortlist})):
        fp32 = work / f"{model_dir.name}-{name}.fp32.onnx"
        build_translator(weights, fp32, **kwargs)
        files[name] = work / f"{model_dir.name}-{name}.int8.onnx"
        quantize_translator(fp32, files[name])
        fp32.unlink()
    return files


def _ct2(model_dir: Path, out: Path, vocab: int, shortlist=None) -> Path:
    """CTranslate2 int8 of a random model (`package_size`'s placeholder pieces), with the
    shortlist as its vocabulary map when given."""
    from package_size import _ct2 as convert, placeholder_pieces

    vmap = None
    if shortlist is not None:
        vmap = out.parent / f"{out.name}.vmap.txt"
        shortlist.write_vmap(vmap, placeholder_pieces(vocab))
    convert(model_dir, out, vocab, vmap)
    return out


def _time_ort(path: Path, sources, beams: int, batch: int, tokens: int, shortlist: bool = True) -> float:
    from wdctl.export.translator import OnnxTranslator

    translator = OnnxTranslator(path, threads=1, shortlist=shortlist)
    per_search = max(1, min(batch, SEARCH_ROWS // beams))

    def run(chunk):
        seqs = translator.raw_sequences(chunk, beams, tokens + 2, min_length=tokens + 2)  # start + tokens
        assert (seqs[:, 0, 1:] != translator.pad_token_id).all(), "a row ended early"

    run(sources[:per_search])  # warm-up
    started = time.perf_counter()
    step = 1 if batch == 1 else per_search
    for i in range(0, len(sources), step):
        run(sources[i:i + step])
    return len(sources) * tokens / (time.perf_counter() - started)


def _time_ct2(path: Path, sources, beams: int, batch: int, tokens: int, vmap: bool) -> float:
    import ctranslate2

    translator = ctranslate2.Translator(str(path), device="cpu", compute_type="int8", intra_threads=1,
                                        inter_threads=1)
    from package_size import placeholder_pieces
    from test_opus_shape import VOCAB

    pieces = placeholder_pieces(VOCAB)
    words = [[pieces[t] for t in s] for s in sources]

    def run(chunk):
        out = translator.translate_batch(chunk, beam_size=beams, max_decoding_length=tokens,
                                         min_decoding_length=tokens, use_vmap=vmap, max_batch_size=0)
        assert all(len(r.hypotheses[0]) == tokens for r in out), "a row ended early"

    run(words[:min(batch, 4)])
    started = time.perf_counter()
    step = 1 if batch == 1 else batch
    for i in range(0, len(words), step):
        run(words[i:i + step])
    return len(sources) * tokens / (time.perf_counter() - started)


def _output_share(path: Path, sources, tokens: int) -> float:
    """The output projection's share of the decoder nodes' kernel time (beam 4, batch 1)."""
    import onnxruntime as ort

    from wdctl.export.session import session_options

    options = session_options(1)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for src in sources[:4]:
            ids = np.array([src], np.int32)
            session.run(["sequences"], {
                "input_ids": ids, "attention_mask": np.ones_like(ids), "max_length": np.array([tokens + 1], np.int32),
                "min_length": np.array([tokens], np.int32), "num_beams": np.array([4], np.int32),
                "length_penalty": np.array([1.0], np.float32), "repetition_penalty": np.array([1.0], np.float32)})
        events = json.loads(Path(session.end_profiling()).read_text())
    decoder = [e for e in events if e.get("cat") == "Node" and e["name"].startswith("dec/")
               and e["name"].endswith("_kernel_time")]
    total = sum(e["dur"] for e in decoder)
    # the output projection: the decoder's last product (its weight is the embedding table), with
    # the node that quantizes its input where int8 has calibrated activation scales
    products = [e["name"] for e in decoder if re.fullmatch(r"dec/MatMul_\d+_kernel_time", e["name"])]
    last = max(products, key=lambda n: int(n.split("_")[1])).removesuffix("_kernel_time")
    return sum(e["dur"] for e in decoder if e["name"] in (f"{last}_kernel_time", f"{last}.quantize_kernel_time")) / total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=32, help="target tokens decoded per sentence")
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--source-length", type=int, default=24, help="source tokens per sentence (EOS included)")
    parser.add_argument("--models", default="teacher,small,tiny")
    args = parser.parse_args(argv)
    from test_opus_shape import PAD, VOCAB
    from transformers import MarianConfig

    from wdctl.export.session import detect_isa
    from wdctl.passes.narrow_marian import ct2_unsupported
    from wdctl.passes.shortlist import Shortlist, choose_size

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="wdctl-scale-") as tmp:
        work = Path(tmp)
        dirs = _models(work)
        raw, rng = _shortlist(VOCAB, PAD)
        sources = _sources(VOCAB, PAD, args.sentences, args.source_length, rng)
        more = _sources(VOCAB, PAD, 256, args.source_length, rng)
        shortlist = Shortlist(VOCAB, raw.frequent, raw.per_source, choose_size(raw, more, [PAD, 0]))
        for name in args.models.split(","):
            files = _translators(dirs[name], shortlist, work)
            row = {"model": name, "output_share_full": round(_output_share(files["full"], sources, args.tokens), 3)}
            ct2 = {}
            if not ct2_unsupported(MarianConfig.from_pretrained(dirs[name])):
                ct2 = {"ct2": _ct2(dirs[name], work / f"{name}.ct2", VOCAB),
                       "ct2-vmap": _ct2(dirs[name], work / f"{name}.ct2-vmap", VOCAB, shortlist)}
            for beams in (1, 4):
                for batch in (1, 32):
                    key = f"beam{beams}_bs{batch}"
                    row[key] = {"ort": _time_ort(files["full"], sources, beams, batch, args.tokens),
                                "ort-shortlist": _time_ort(files["shortlist"], sources, beams, batch, args.tokens)}
                    for kind, path in ct2.items():
                        row[key][kind] = _time_ct2(path, sources, beams, batch, args.tokens, kind == "ct2-vmap")
                    print(name, key, {k: round(v, 1) for k, v in row[key].items()}, flush=True)
            rows.append(row)
    result = {"command": "python benchmarks/scale_bench.py " + " ".join(argv or sys.argv[1:]),
              "tokens": args.tokens, "sentences": args.sentences, "source_length": args.source_length,
              "shortlist_size": shortlist.size, "cpu": platform.processor() or platform.machine(),
              "isa": detect_isa(), "minutes": round((time.perf_counter() - started) / 60, 1), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "scale.md").write_text(_table(result), encoding="utf-8")
    print(_table(result))


def _table(result: dict) -> str:
    lines = [f"# Decoding speed at opus-mt scale (random weights, {result['tokens']} target tokens per sentence)", "",
             f"`{result['command']}`, {result['sentences']} sentences of {result['source_length']} source tokens, "
             f"shortlist size {result['shortlist_size']}, ISA {result['isa']}, {result['minutes']} min. "
             "Target tokens per second, one thread.", "",
             "| model | search | ORT int8 | ORT int8 + shortlist | × | CT2 int8 | CT2 int8 + vmap | ORT + shortlist × CT2 + vmap |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    teacher = next((r for r in result["rows"] if r["model"] == "teacher"), None)
    for row in result["rows"]:
        for key in ("beam1_bs1", "beam1_bs32", "beam4_bs1", "beam4_bs32"):
            cell = row[key]
            ct2, vmap = cell.get("ct2"), cell.get("ct2-vmap")
            ct2_text = "–" if ct2 is None else f"{ct2:.0f}"
            vmap_text = "–" if vmap is None else f"{vmap:.0f}"
            versus = "–" if vmap is None else f"{cell['ort-shortlist'] / vmap:.2f}"
            search = key.replace("_", ", ").replace("bs", "batch ")
            lines.append(f"| {row['model']} | {search} | {cell['ort']:.0f} | {cell['ort-shortlist']:.0f} | "
                         f"{cell['ort-shortlist'] / cell['ort']:.2f} | {ct2_text} | {vmap_text} | {versus} |")
    lines += ["", "| model | output projection's share of the decoder step (full vocabulary, beam 4, batch 1) | "
              "× teacher, ORT int8 beam 4 batch 1 (full) | (shortlist) |", "|---|---:|---:|---:|"]
    for row in result["rows"]:
        full = row["beam4_bs1"]["ort"] / teacher["beam4_bs1"]["ort"] if teacher else float("nan")
        short = row["beam4_bs1"]["ort-shortlist"] / teacher["beam4_bs1"]["ort-shortlist"] if teacher else float("nan")
        lines.append(f"| {row['model']} | {row['output_share_full']:.0%} | {full:.2f} | {short:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
