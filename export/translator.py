"""A self-contained onnxruntime translator: the whole search inside one ONNX graph.

`build_translator(weights)` (in `translator_graph`, re-exported here) assembles it from plain
numpy weights: the encoder, run once per sentence beside the `BeamSearch` op, and a fused
decoder step that the op runs and that reads the encoder's K/V once per sentence, not per beam.

`quantize_translator(src, dst)` stores the weight operand of every MatMul (in every subgraph) as
int8 with per-column scales; its input is quantized with the fixed scale calibrated at export
(`calibration`: `QuantizeLinear` + `MatMulIntegerToFloat`, so a sentence's rounding does not
depend on its batch), or per call (`DynamicQuantizeMatMul`) in a file without calibrated ranges;
attention's activation x activation products stay float (inside MultiHeadAttention anyway).

`OnnxTranslator(path)` runs the file in a plain `InferenceSession` on id lists and undoes the
documented differences from transformers' `generate` (see `OnnxTranslator.generate`).

The weights come as a `MarianWeights` (`marian_weights(model)` extracts one from a
`MarianMTModel`); the decoder may be narrower than the encoder (d_dec != d_enc).
Modules: `translator_weights` (the weights), `translator_graph` (graph assembly), this one
(quantization and runtime; re-exports the public names of the other two).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from wdctl.core.errors import InputError
from wdctl.export.calibration import METADATA_KEY, OUTPUT_PROJECTION, ranges_metadata, read_ranges
from wdctl.export.package import OnnxPackage
from wdctl.export.session import detect_isa, session_options, settle_int8_kernels
from wdctl.export.translator_embeddings import share_embeddings, share_shortlist_rows
from wdctl.export.translator_graph import REST_COVARIANCE, _subgraphs, build_translator, save_model, set_shortlist_size
from wdctl.export.translator_weights import (  # noqa: F401 - the public names, re-exported
    AttentionWeights,
    DecoderLayerWeights,
    EncoderLayerWeights,
    FeedForwardWeights,
    LayerNormWeights,
    MarianWeights,
    marian_weights,
)
from wdctl.passes.batching import length_sorted_batches, output_limit, output_limit_rule

MAX_BEAMS = 64
ROWS_PER_RUN = 16  # sentences x beams per search: see PackageTranslator


def export_translator(model, path, *, early_stopping: bool = True, int8_path=None, shortlist=None,
                      activation_ranges: dict | None = None):
    """Build the translator of a `MarianMTModel` (with `shortlist` inside when given), write it
    to `path` (and its int8 copy to `int8_path` when given); returns the path.
    `activation_ranges` (`calibration.activation_ranges`) go into its metadata, for int8 to
    quantize each product's input with a fixed scale; without them int8 scales per call."""
    model_proto = build_translator(marian_weights(model), None, early_stopping=early_stopping, shortlist=shortlist)
    if activation_ranges is not None:
        model_proto.metadata_props.add(key=METADATA_KEY, value=ranges_metadata(activation_ranges))
    save_model(model_proto, path)
    if int8_path is not None:
        quantize_translator(model_proto, int8_path)
    return Path(path)


# --------------------------------------------------------------------------------------------
# Weight-only int8
# --------------------------------------------------------------------------------------------

def quantize_translator(src, dst, *, min_elements: int = 0, reduce_range: bool | None = None):
    """int8: every MatMul whose second operand is an initializer (in any subgraph, including the
    search op's encoder and decoder) becomes a `DynamicQuantizeMatMul` with an int8 weight and
    per-column scales (symmetric, zero point 0); the float bias stays separate. Where the file
    records calibrated activation ranges (`calibration`, written by `wdctl export`), each then
    quantizes its input with that fixed scale instead (`fix_activation_scales`).
    Everything else (attention's activation x activation products, layer norms, a shortlist's
    rest-mass estimate) stays float,
    except the embeddings: each distinct table is stored once, int8, in the main graph, and
    serves the encoder's and decoder's lookups and the tied output projection
    (`translator_embeddings.share_embeddings`).
    `reduce_range` keeps weights within ±63 (7 bits): CPUs without VNNI multiply u8 activations by
    s8 weights in pairs that saturate at full range (on an AVX2 CPU the test copy model's int8
    search agreed with fp32 on 8 of 16 sentences at ±127, on 15-16 at ±63); None = when this CPU
    is such a CPU (`detect_isa() == "avx2"`), the rule optimum's int8 files follow.
    `src` is a path or a ModelProto (left unchanged); writes `dst` when given. Returns the number
    of MatMuls quantized.
    """
    import onnx
    from onnx import numpy_helper

    if reduce_range is None:
        reduce_range = detect_isa() == "avx2"
    limit = 63.0 if reduce_range else 127.0
    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)
    else:
        model = onnx.load(str(src))
    walked = list(_subgraphs(model.graph))
    graphs = [g for g, _ in walked]
    # the embeddings first: one int8 table per distinct embedding, in the main graph, read by
    # the lookups and by the output projection tied to them (`translator_embeddings`)
    done: dict[tuple[int, str], tuple[str, str, str]] = share_embeddings(model, walked, limit)
    # a shortlist's gathered output rows stay int8 too
    products = {out: OUTPUT_PROJECTION for out in share_shortlist_rows(walked)}  # output -> weight name
    count = 0
    for graph, scope in walked:
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        folded = []
        for node in graph.node:  # edited in place: the subgraph protos in `walked` stay the live ones
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] not in scope:
                continue
            owner = scope[node.input[1]]
            tensor = next(t for t in owner.initializer if t.name == node.input[1])
            w = numpy_helper.to_array(tensor)
            if w.ndim != 2 or w.dtype != np.float32 or w.size < min_elements or tensor.name.endswith(REST_COVARIANCE):
                continue  # (a shortlist's rest-mass estimate stays float: it is a variance, d x d)
            key = (id(owner), tensor.name)
            if key not in done:
                amax = np.abs(w).max(axis=0)
                scale = np.where(amax > 0, amax / limit, 1.0).astype(np.float32)
                q = np.clip(np.rint(w / scale), -limit, limit).astype(np.int8)
                names = (tensor.name + ".int8", tensor.name + ".scale", tensor.name + ".zp")
                owner.initializer.extend([numpy_helper.from_array(q, names[0]),
                                          numpy_helper.from_array(scale, names[1]),
                                          numpy_helper.from_array(np.zeros(w.shape[1], np.int8), names[2])])
                done[key] = names
            a_input = node.input[0]
            del node.input[:]
            node.input.extend([a_input, *done[key]])
            node.op_type, node.domain = "DynamicQuantizeMatMul", "com.microsoft"
            count += 1
            # fold a following bias Add (x @ W + b) into the op's bias input
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add" and node.output[0] not in {o.name for o in graph.output}:
                add = users[0]
                other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
                if other in scope:
                    bias = next(t for t in scope[other].initializer if t.name == other)
                    if list(bias.dims) == [w.shape[1]] and bias.data_type == onnx.TensorProto.FLOAT:
                        node.input.append(other)
                        out = add.output[0]
                        del node.output[:]
                        node.output.append(out)
                        folded.append(add)
            products[node.output[0]] = tensor.name.rsplit("/", 1)[-1]
        for add in folded:
            graph.node.remove(add)
    ranges = read_ranges(model)
    if ranges is not None:
        fix_activation_scales(walked, products, ranges)
    # drop float weights nobody reads any more
    used = {i for graph in graphs for node in graph.node for i in node.input}
    for graph in graphs:
        keep = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    for prop in model.metadata_props:
        if prop.key == "wdctl.precision":
            prop.value = "int8"
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "wdctl.int8_weight_range": str(int(limit)),
                                        "wdctl.int8_activations": "dynamic" if ranges is None else "calibrated"})
    if dst is not None:
        save_model(model, dst)
    return count


def fix_activation_scales(walked, products: dict[str, str], ranges: dict[str, list[float]]) -> None:
    """Each `DynamicQuantizeMatMul` (its output -> its weight's name in `products`) becomes
    `QuantizeLinear` with the calibrated range of its input (`wdctl.export.calibration`; u8, the
    zero point exact) + `MatMulIntegerToFloat` on the same int8 weight, scales and bias: the
    same work, but a row's rounding no longer depends on the other rows of its call."""
    from onnx import helper, numpy_helper

    for graph, _ in walked:
        for node in list(graph.node):
            if node.op_type != "DynamicQuantizeMatMul":
                continue
            out = node.output[0]
            key = products.get(out)
            if key not in ranges:
                raise ValueError(f"no calibrated activation range for the product {key or out}")
            lo, hi = min(ranges[key][0], 0.0), max(ranges[key][1], 0.0)
            scale = max(hi - lo, 1e-8) / 255.0
            zero = int(np.clip(np.rint(-lo / scale), 0, 255))
            graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), out + ".a_scale"),
                                      numpy_helper.from_array(np.array(zero, np.uint8), out + ".a_zp")])
            a, b, b_scale, *rest = node.input
            b_zero, bias = (list(rest) + ["", ""])[:2]
            index = list(graph.node).index(node)
            graph.node.insert(index, helper.make_node("QuantizeLinear", [a, out + ".a_scale", out + ".a_zp"],
                                                      [out + ".a_u8"], name=(node.name or out) + ".quantize"))
            inputs = [out + ".a_u8", b, out + ".a_scale", b_scale, out + ".a_zp", b_zero, bias]
            while not inputs[-1]:
                inputs.pop()
            del node.input[:]
            node.input.extend(inputs)
            node.op_type = "MatMulIntegerToFloat"


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------

def check_search_settings(beams: int, max_length: int, vocab_size: int, max_positions: int,
                          source_length: int = 0) -> None:
    """Refuse impossible searches with a one-line InputError, before anything is allocated."""
    if not isinstance(beams, (int, np.integer)) or isinstance(beams, bool) or beams < 1:
        raise InputError(f"--beams must be a positive integer (got {beams!r})")
    if beams > MAX_BEAMS:
        raise InputError(f"--beams {beams} is more than {MAX_BEAMS}")
    if beams > vocab_size:
        raise InputError(f"--beams {beams} is more than the vocabulary ({vocab_size} tokens)")
    if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) or max_length < 2:
        raise InputError(f"max length must be an integer >= 2: the start token and one more (got {max_length!r})")
    if max_length > max_positions:
        raise InputError(f"max length {max_length} is beyond the model's position table ({max_positions})")
    if source_length > max_positions:
        raise InputError(f"input of {source_length} tokens is beyond the model's position table ({max_positions})")


class OnnxTranslator:
    """Runs a translator file in a plain `onnxruntime.InferenceSession` on token id lists.

    `generate(sources, beams=4, max_length=None, length_penalty=1.0)` returns, for each source id
    list, the target ids as transformers' `generate` returns them for a MarianMTModel with its
    OPUS-MT generation config (forced EOS, `<pad>` banned), without the leading decoder start
    token and without trailing padding, each sentence limited to min(max_length, `output_limit`
    of its own length) as `passes.translate.generate_limited` limits it: a sentence's output
    does not depend on its batch. Empty source lists give empty outputs in their place.

    Files whose metadata records `wdctl.output_limit` end each row at its own limit inside the
    decoder step; older files (built before the per-row limit) still run, a search per distinct
    limit, with the same output.
    """

    def __init__(self, path, threads: int = 1, shortlist: bool = True):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: translator file not found")
        if not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be a positive integer (got {threads!r})")
        source: str | bytes = str(path)
        if not shortlist:  # the same file with every id in the shortlist: the full search
            source = _without_shortlist(path)
        try:
            self.session = ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a broken file is the user's input
            raise InputError(f"{path}: cannot load translator ({str(exc).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.shortlist_size = int(meta.get("wdctl.shortlist_size", 0))  # 0: no shortlist
        try:
            self.vocab_size = int(meta["wdctl.vocab_size"])
            self.max_positions = int(meta["wdctl.max_positions"])
            self.pad_token_id = int(meta["wdctl.pad_token_id"])
            self.eos_token_id = int(meta["wdctl.eos_token_id"])
            self.precision = meta.get("wdctl.precision", "fp32")
        except KeyError as exc:
            raise InputError(f"{path}: not a wdctl translator (no {exc.args[0]} metadata)") from None
        # the output limit each row gets inside the graph; None: a file from before the per-row
        # limit (rows of one search share its max_length, so searches are split by limit)
        self.row_limit_rule = meta.get("wdctl.output_limit")
        if self.row_limit_rule is not None and self.row_limit_rule != output_limit_rule():
            raise InputError(f"{path}: built with the output limit {self.row_limit_rule}, this wdctl decodes with "
                             f"{output_limit_rule()}; export the package again")
        self.path = path

    def check(self, beams: int, max_length: int, source_length: int = 0) -> None:
        check_search_settings(beams, max_length, self.vocab_size, self.max_positions, source_length)

    def generate(self, sources: Sequence[Sequence[int]], beams: int = 4, max_length: int | None = None,
                 length_penalty: float = 1.0, batch_size: int | None = None):
        """Translate id lists; see the class doc. Differences from the raw op that are undone here:

        - finished beam hypotheses come back without EOS: EOS is appended;
        - the op has no forced EOS at max_length: it runs to max_length - 1 and every hypothesis
          that reached that length gets EOS as its last token, which scores it exactly as
          transformers' forced EOS does (log-probability 0, length max_length - 1);
        - length penalty: both divide the summed log-probabilities by (generated length incl.
          EOS) ** length_penalty, so no correction is needed.
        `max_length` counts the decoder start token, as in transformers (None: the position table).
        Each sentence's limit is min(max_length, `output_limit(len(source))`); a run's op
        max_length is the largest limit of its sentences, and the graph ends the others at
        theirs with a forced EOS (log-probability 0, as transformers' forced EOS).
        `batch_size` splits the sources into session runs of that many (None: one run). Each
        run is one `session.run`; there is no search code on the Python side.
        With the int8 file, activations are quantized per tensor at run time, so a sentence's
        int8 output can depend on the other sentences of its batch (fp32 does not).
        """
        sources = [list(map(int, s)) for s in sources]
        longest = max((len(s) for s in sources), default=0)
        if max_length is None:
            max_length = self.max_positions
        self.check(beams, max_length, longest)
        for s in sources:
            if any(t < 0 or t >= self.vocab_size for t in s):
                raise InputError(f"token ids must be in [0, {self.vocab_size})")
        results: list[list[int]] = [[] for _ in sources]
        order = [i for i, s in enumerate(sources) if s]
        if not order:
            return results
        if max_length == 2:  # transformers forces EOS at the first and only step
            for i in order:
                results[i] = [self.eos_token_id]
            return results
        limits = {i: output_limit(len(sources[i]), max_length) for i in order}
        if self.row_limit_rule is None:  # an older file: one search per limit
            groups = [[i for i in order if limits[i] == limit] for limit in sorted(set(limits.values()))]
        else:
            groups = [order]
        for group in groups:
            step = batch_size or len(group)
            for start in range(0, len(group), step):
                chunk = group[start:start + step]
                rows = self._run([sources[i] for i in chunk], beams, max(limits[i] for i in chunk), length_penalty)
                for i, row in zip(chunk, rows):
                    results[i] = row
        return results

    def raw_sequences(self, sources, beams: int, max_length: int, length_penalty: float = 1.0,
                      min_length: int = 0) -> np.ndarray:
        """One `session.run` on one batch of id lists: the op's own `sequences`, (batch, 1,
        max_length - 1) int32, decoder start token first, right-padded with `<pad>`, no EOS on
        finished rows (what any other onnxruntime binding gets from the same feeds). `min_length`
        (counted as `max_length` is) holds EOS off until then (benchmarks decode a fixed length)."""
        width = max(len(s) for s in sources)
        ids = np.full((len(sources), width), self.pad_token_id, dtype=np.int32)
        mask = np.zeros((len(sources), width), dtype=np.int32)
        for r, s in enumerate(sources):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
        feeds = {
            "input_ids": ids, "attention_mask": mask,
            "max_length": np.array([max_length - 1], dtype=np.int32),
            "min_length": np.array([max(0, min_length - 1)], dtype=np.int32),
            "num_beams": np.array([beams], dtype=np.int32),
            "length_penalty": np.array([length_penalty], dtype=np.float32),
            "repetition_penalty": np.array([1.0], dtype=np.float32),
        }
        (sequences,) = self.session.run(["sequences"], feeds)
        return sequences

    def _run(self, sources, beams, max_length, length_penalty):
        sequences = self.raw_sequences(sources, beams, max_length, length_penalty)
        rows = []
        for seq in sequences[:, 0, :].tolist():
            row = seq[1:]  # drop the decoder start token
            if self.eos_token_id in row:  # the op leaves EOS out; cut there anyway, should it not
                row = row[:row.index(self.eos_token_id)]
            while row and row[-1] == self.pad_token_id:  # <pad> is banned, so trailing pads are padding
                row.pop()
            rows.append(row + [self.eos_token_id])
        return rows


def _without_shortlist(path: Path) -> str | bytes:
    """The translator file, or when it has a shortlist, its bytes with the shortlist as large as
    the vocabulary (`set_shortlist_size`)."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - a broken file is the user's input
        raise InputError(f"{path}: cannot load translator ({str(exc).splitlines()[0]})") from None
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if int(meta.get("wdctl.shortlist_size", 0)) == 0:
        return str(path)
    set_shortlist_size(model, int(meta["wdctl.vocab_size"]))
    return model.SerializeToString()


def translator_metadata(path) -> dict[str, str]:
    """A translator file's metadata (`wdctl.*`), without loading its weights into a session."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def sentences_per_search(beams: int, batch_size: int, rows_per_run: int = ROWS_PER_RUN) -> int:
    """How many sentences `PackageTranslator` puts in one search (rows = that x beams)."""
    return min(batch_size, max(1, rows_per_run // beams)) if rows_per_run else batch_size


def settle_kernels_for_search(beams: int, batch_size: int) -> bool:
    """`settle_int8_kernels` for a process about to run `PackageTranslator` searches of these
    settings (and nothing else); call it before the first session. Returns whether AMX was refused."""
    return settle_int8_kernels(sentences_per_search(beams, batch_size) * beams)


class PackageTranslator:
    """Text in, text out over a package's `translator.onnx` and tokenizer (`wdctl translate`, the
    bench, `--onnx-distill`): length-sorted batches (`passes.batching`), each sentence with
    `translate_torch`'s output limit (its own), one `session.run` per batch; empty lines give empty outputs
    in their place. The beam count and length are checked before the tokenizer is loaded or
    anything is allocated. `workers` > 1 runs that many batches at once on one session of one
    intra-op thread each (onnxruntime releases the GIL): for throughput jobs such as distillation,
    where one search on two threads gained only ~1.25x.

    A batch runs as searches of at most `rows_per_run` rows (sentences x beams; 0: no limit).
    onnxruntime's CPU search copies every layer's K/V cache each step and keeps decoding a
    batch's finished sentences, so past ~16 rows its time per token climbs: the bundled
    teacher, int8, beam 4, 256 test sentences, 1 thread: 1,100 tok/s in searches of 4
    sentences, 704 in searches of 32 (`benchmarks/search_rows.py`). CTranslate2 offers
    the same split as `max_batch_size`; the batches being length-sorted, a split batch is the
    same as smaller batches. `shortlist=False` searches the full vocabulary of a translator
    built with a shortlist (`OnnxTranslator`)."""

    def __init__(self, package, threads: int = 1, tokenizer=None, workers: int = 1,
                 rows_per_run: int = ROWS_PER_RUN, shortlist: bool = True):
        package = OnnxPackage(package)
        if rows_per_run < 0:
            raise InputError(f"rows per run must be 0 (no limit) or more (got {rows_per_run})")
        self.package = package.path
        self.workers = workers
        self.rows_per_run = rows_per_run
        self.translator = OnnxTranslator(package.translator, threads=1 if workers > 1 else threads,
                                         shortlist=shortlist)
        self._tokenizer = tokenizer  # None: the package's, loaded when first needed

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = OnnxPackage(self.package).load_tokenizer()
        return self._tokenizer

    def check(self, beams: int, max_length: int) -> None:
        """Refuse impossible settings (each output is also capped by its own source's limit, so a
        `max_length` beyond the position table is only refused where a sentence would reach it)."""
        self.translator.check(beams, max(2, min(max_length, self.translator.max_positions)))

    def translate(self, sentences: Sequence[str], beams: int = 4, batch_size: int = 32, max_length: int = 256,
                  length_penalty: float = 1.0) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch size must be at least 1 (got {batch_size!r})")
        self.check(beams, max_length)
        out = [""] * len(sentences)
        tok = self.tokenizer
        jobs = []  # tokenized in this thread; only session.run goes to the workers
        per_search = sentences_per_search(beams, batch_size, self.rows_per_run)
        for idx in length_sorted_batches(sentences, per_search):
            ids = tok([sentences[i] for i in idx], truncation=True,
                      max_length=min(max_length, tok.model_max_length))["input_ids"]
            # the batch's largest limit: `generate` gives each sentence min(that, its own)
            jobs.append((idx, ids, output_limit(max(len(row) for row in ids), max_length)))

        def search(job):
            return self.translator.generate(job[1], beams=beams, max_length=job[2], length_penalty=length_penalty)

        with ThreadPoolExecutor(self.workers) as pool:
            results = pool.map(search, jobs) if self.workers > 1 else map(search, jobs)
            for (idx, _, _), rows in zip(jobs, results):
                for i, text in zip(idx, tok.batch_decode(rows, skip_special_tokens=True)):
                    out[i] = text
        return out
