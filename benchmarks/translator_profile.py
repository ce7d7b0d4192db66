"""Where a package's in-graph translator spends its time: onnxruntime's profiler over a few test
sentences, and how many positions the search decodes for the tokens it returns.

    .venv/bin/python benchmarks/translator_profile.py PACKAGE [--beams 4] [--batch-size 32]
        [--sentences 64] [--threads 1]

PACKAGE is an ONNX package with `translator.onnx` (`wdctl export`, or the bench's package cache,
e.g. runs/bench-packages/teacher-int8 after the README's bench command). The sentences are the
first --sentences of the bundled test split, in the length-sorted batches wdctl uses, with
wdctl's per-batch output limit. Prints: BeamSearch's time and its own share (its total minus
the decoder nodes it runs), kernel time per op type of those nodes, the mean time per call
of the decoder's self- and cross-attention, and the decoded / returned ratio: per batch, the
longest returned row times the rows (the op keeps decoding finished rows until the batch's
longest ends), over the returned tokens (EOS included).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def attention_kinds(path: Path) -> dict[str, str]:
    """Node name -> 'self' or 'cross' for every MultiHeadAttention of the decoder step."""
    import onnx

    from wdctl.export.translator import _subgraphs

    kinds = {}
    for graph, _ in _subgraphs(onnx.load(str(path)).graph):
        for node in graph.node:
            if node.op_type == "MultiHeadAttention" and node.name.startswith("dec/"):
                kinds[node.name] = "cross" if "cross_key" in node.input[1] else "self"
    return kinds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import onnxruntime as ort

    from wdctl.core.corpus import read_parallel
    from wdctl.export.session import session_options
    from wdctl.export.translator import PackageTranslator
    from wdctl.passes.batching import length_sorted_batches, output_limit

    package = PackageTranslator(args.package, threads=args.threads)
    translator = package.translator
    opts = session_options(args.threads)  # the translator's own settings, plus the profiler
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="translator-profile-")) / "profile")
    translator.session = ort.InferenceSession(str(translator.path), opts, providers=["CPUExecutionProvider"])

    texts = [s for s, _ in read_parallel(REPO / "examples" / "data" / "bible", "test")][:args.sentences]
    decoded = returned = 0
    for idx in length_sorted_batches(texts, args.batch_size):
        ids = package.tokenizer([texts[i] for i in idx])["input_ids"]
        limit = min(translator.max_positions, output_limit(max(len(r) for r in ids)))
        rows = translator.raw_sequences(ids, args.beams, limit)[:, 0, 1:]
        lengths = [int((row != translator.pad_token_id).sum()) + 1 for row in rows]  # + EOS
        decoded += max(lengths) * len(lengths)
        returned += sum(lengths)

    events = json.loads(Path(translator.session.end_profiling()).read_text())
    by_op, by_node, calls = collections.Counter(), collections.Counter(), collections.Counter()
    search = 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            if e["args"]["op_name"] == "BeamSearch":
                search += e["dur"]
            elif node.startswith(("dec/", "placeholder/")):  # the subgraphs BeamSearch runs
                by_op[e["args"]["op_name"]] += e["dur"]
                by_node[node] += e["dur"]
                calls[node] += 1
            else:
                by_op["(encoder, outside the search)"] += e["dur"]
    nested = sum(v for k, v in by_op.items() if not k.startswith("("))
    print(f"{args.package}: beams {args.beams}, batch size {args.batch_size}, {len(texts)} sentences, "
          f"{args.threads} thread(s)")
    print(f"BeamSearch {search / 1e3:,.0f} ms; its own work between steps (minus the decoder's nodes) "
          f"{(search - nested) / 1e3:,.0f} ms = {100 * (search - nested) / search:.0f}%")
    for op, us in by_op.most_common():
        if us >= 0.005 * search:
            print(f"  {op:32s} {us / 1e3:9,.0f} ms  {100 * us / search:5.1f}% of BeamSearch's time")
    kinds = attention_kinds(translator.path)
    for kind in ("self", "cross"):
        nodes = [n for n, k in kinds.items() if k == kind and calls[n]]
        if nodes:
            per_call = sum(by_node[n] for n in nodes) / sum(calls[n] for n in nodes)
            print(f"decoder {kind}-attention: {per_call / 1e3:.2f} ms a call ({len(nodes)} layers)")
    print(f"decoded / returned tokens: {decoded / returned:.2f} ({decoded} / {returned})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
