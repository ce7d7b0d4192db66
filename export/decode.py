"""A fast greedy / beam-search decoder over an exported package (encoder + merged decoder).

`ORTModelForSeq2SeqLM.generate` is transformers' `generate()`: it runs onnxruntime for the
network, but the beam bookkeeping, the cache objects and the logits processors run as many
small torch operations between the ORT calls. On small students those dominate. This module
runs the same search with numpy between the ORT calls and reproduces `generate()`'s
semantics, so that outputs agree token for token:

* start from `decoder_start_token_id`; `max_length` counts that start token (HF semantics);
* logits processors as in HF, in HF's order: `bad_words_ids` (so `<pad>` is never generated),
  `min_length`, and `forced_eos_token_id` on the last position;
* greedy: arg-max of the processed logits;
* beam search: log-softmax, then the processors, top 2*beams candidates over all beams,
  finished hypotheses scored `sum(log p) / len ** length_penalty` (len counts the generated
  tokens, EOS included), `early_stopping` True / False / "never" exactly as HF's heuristic.

Differences from `generate()` that do not change the tokens: the first decoder step runs on
one row per sentence (all beams of a sentence start identical) and is then repeated, and
sentences (or greedy rows) that are finished are dropped from the batch instead of being fed
padding. With int8 files the dynamic (per-tensor) activation scales depend on which rows are
in a batch, so batched int8 results can differ slightly from `generate()`; at batch 1 they
agree, and fp32 agrees at any batch size.

`device="cuda"` keeps the KV cache on the GPU with IO binding (cache reordering runs as a
small ONNX Gather graph on the GPU); only the logits come back to the host each step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from wdctl.core.errors import InputError
from wdctl.export.generation import GenerationSettings
from wdctl.export.package import OnnxPackage
from wdctl.export.session import hold_torch_threads, make_session, make_session_from_bytes, providers_for
from wdctl.passes.batching import length_sorted_batches, output_limit

NEG_INF = np.float32(-np.inf)
BIG_NEG = np.float32(-1.0e9)  # the constant HF's beam search uses to mask candidates
_PAST = re.compile(r"past_key_values\.(\d+)\.(decoder|encoder)\.(key|value)$")


# ----------------------------------------------------------------------------- numeric helpers


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """x - max - log(sum(exp(x - max))), in the order torch's kernel computes it."""
    shifted = x - x.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


# ----------------------------------------------------------------------------- ORT runners


class _Runner:
    """Encoder + merged decoder with the KV cache for one batch (numpy on the host)."""

    def __init__(self, owner: "OrtTranslator", input_ids: np.ndarray, attention_mask: np.ndarray):
        self.o = owner
        self.mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        (self.hidden,) = owner.encoder.run(
            [owner.encoder_output], {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                                     "attention_mask": self.mask})
        self.past: list[np.ndarray] | None = None  # in owner.past_inputs order

    def step(self, tokens: np.ndarray) -> np.ndarray:
        o = self.o
        n = tokens.shape[0]
        feed = {"input_ids": tokens.reshape(n, 1).astype(np.int64, copy=False),
                "encoder_attention_mask": self.mask, "encoder_hidden_states": self.hidden}
        if self.past is None:
            empty = np.zeros((n, o.heads, 0, o.head_dim), dtype=o.kv_dtype)
            feed.update({name: empty for name in o.past_inputs})
            feed["use_cache_branch"] = np.zeros(1, dtype=bool)
            out = o.decoder.run(o.all_outputs, feed)
            present = dict(zip(o.all_outputs[1:], out[1:]))
            self.past = [present[o.present_for[name]] for name in o.past_inputs]
        else:
            feed.update(zip(o.past_inputs, self.past))
            feed["use_cache_branch"] = np.ones(1, dtype=bool)
            out = o.decoder.run(o.self_outputs, feed)
            for slot, value in zip(o.self_slots, out[1:]):
                self.past[slot] = value
        return out[0].reshape(n, -1).astype(np.float32, copy=False)

    def select(self, rows: np.ndarray, sentences_changed: bool) -> None:
        """Keep decoder rows `rows` (reorder beams; drop finished rows)."""
        for slot in self.o.self_slots:
            self.past[slot] = self.past[slot][rows]
        if sentences_changed:
            self.mask = self.mask[rows]
            self.hidden = self.hidden[rows]
            for slot in self.o.cross_slots:
                self.past[slot] = self.past[slot][rows]


class _BoundRunner(_Runner):
    """Same interface as `_Runner`, with IO binding: KV cache and encoder states stay on the
    device (`owner.device`, "cuda" on GPUs); only logits come to the host."""

    def __init__(self, owner: "OrtTranslator", input_ids: np.ndarray, attention_mask: np.ndarray):
        self.o = owner
        self.mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        binding = owner.encoder.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", self.mask)
        binding.bind_output(owner.encoder_output, owner.device)
        owner.encoder.run_with_iobinding(binding)
        self.hidden = binding.get_outputs()[0]
        self.past = None

    def step(self, tokens: np.ndarray) -> np.ndarray:
        o = self.o
        n = tokens.shape[0]
        binding = o.decoder.io_binding()
        binding.bind_cpu_input("input_ids", tokens.reshape(n, 1).astype(np.int64))
        binding.bind_cpu_input("encoder_attention_mask", self.mask)
        binding.bind_ortvalue_input("encoder_hidden_states", self.hidden)
        first = self.past is None
        if first:
            empty = np.zeros((n, o.heads, 0, o.head_dim), dtype=o.kv_dtype)
            for name in o.past_inputs:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in zip(o.past_inputs, self.past):
                binding.bind_ortvalue_input(name, value)
        binding.bind_cpu_input("use_cache_branch", np.array([not first]))
        names = o.all_outputs if first else o.self_outputs
        binding.bind_output(names[0], "cpu")
        for name in names[1:]:
            binding.bind_output(name, o.device)
        binding.synchronize_inputs()
        o.decoder.run_with_iobinding(binding)
        binding.synchronize_outputs()
        outputs = binding.get_outputs()
        if first:
            present = dict(zip(names[1:], outputs[1:]))
            self.past = [present[o.present_for[name]] for name in o.past_inputs]
        else:
            for slot, value in zip(o.self_slots, outputs[1:]):
                self.past[slot] = value
        return outputs[0].numpy().reshape(n, -1).astype(np.float32, copy=False)

    def select(self, rows: np.ndarray, sentences_changed: bool) -> None:
        slots = list(self.o.self_slots) + (list(self.o.cross_slots) if sentences_changed else [])
        values = [self.past[s] for s in slots] + ([self.hidden] if sentences_changed else [])
        gathered = self.o.gather_on_device(values, rows)
        for slot, value in zip(slots, gathered):
            self.past[slot] = value
        if sentences_changed:
            self.hidden = gathered[-1]
            self.mask = self.mask[rows]


# ----------------------------------------------------------------------------- the translator


class OrtTranslator:
    """Greedy and beam-search translation with an exported package (encoder + merged decoder).

    `package_dir` is what `wdctl export` writes (also loadable by `ORTModelForSeq2SeqLM`).
    `threads` sets onnxruntime's intra-op threads (spinning off, one inter-op thread); torch,
    if this process imported it, is held to one thread.
    """

    def __init__(self, package_dir: Path | str, *, threads: int = 1, device: str = "cpu",
                 encoder_file: str = OnnxPackage.ENCODER, decoder_file: str = OnnxPackage.DECODER):
        self.package = Path(package_dir)
        if not self.package.is_dir():
            raise InputError(f"{self.package}: package directory not found")
        providers_for(device)  # fails early and clearly when CUDA is not available
        hold_torch_threads(1)
        self.device = device
        self.threads = threads
        self.io_binding = device == "cuda"  # IO binding keeps the cache on the GPU
        self.device = "cuda" if device == "cuda" else "cpu"
        self.settings = GenerationSettings.from_package(self.package)
        self._single_bad = np.asarray(self.settings.single_bad, dtype=np.int64)
        for name in (encoder_file, decoder_file):
            if not (self.package / name).is_file():
                raise InputError(f"{self.package / name}: not found (is this a package written by `wdctl export`?)")
        self.encoder = make_session(self.package / encoder_file, threads, device)
        self.decoder = make_session(self.package / decoder_file, threads, device)
        self._tokenizer = None
        self._gather: dict = {}  # (rank, dtype) signature -> GPU gather session
        self._inspect(self.package / decoder_file)

    # -- model introspection
    def _inspect(self, decoder_path: Path) -> None:
        self.encoder_output = self.encoder.get_outputs()[0].name
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        needed = {"input_ids", "encoder_attention_mask", "encoder_hidden_states", "use_cache_branch"}
        if not needed <= set(inputs):
            raise InputError(f"{decoder_path}: not a merged decoder with KV cache "
                             f"(inputs {sorted(inputs)}; export with `wdctl export`)")
        self.past_inputs = [name for name in inputs if _PAST.match(name)]
        if not self.past_inputs:
            raise InputError(f"{decoder_path}: decoder has no past_key_values inputs")
        shape = inputs[self.past_inputs[0]].shape
        cache = _decoder_cache_shape(self.package / "config.json")
        if cache is not None:
            self.heads, self.head_dim = cache
        elif isinstance(shape[1], int) and isinstance(shape[3], int):
            self.heads, self.head_dim = shape[1], shape[3]
        else:
            raise InputError(f"{decoder_path}: cannot read attention heads / head size from {shape}")
        self.kv_dtype = np.float16 if "float16" in inputs[self.past_inputs[0]].type else np.float32
        outputs = [o.name for o in self.decoder.get_outputs()]
        self.present_for = {name: name.replace("past_key_values.", "present.") for name in self.past_inputs}
        missing = [p for p in self.present_for.values() if p not in outputs]
        if "logits" not in outputs or missing:
            raise InputError(f"{decoder_path}: decoder outputs do not match its inputs (missing {missing or 'logits'})")
        self.all_outputs = ["logits"] + list(self.present_for.values())
        self.self_slots = [i for i, name in enumerate(self.past_inputs) if ".decoder." in name]
        self.cross_slots = [i for i, name in enumerate(self.past_inputs) if ".encoder." in name]
        self.self_outputs = ["logits"] + [self.present_for[self.past_inputs[i]] for i in self.self_slots]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = OnnxPackage(self.package).load_tokenizer()
            hold_torch_threads(1)
        return self._tokenizer

    def _runner(self, input_ids, attention_mask) -> _Runner:
        if self.io_binding:
            return _BoundRunner(self, input_ids, attention_mask)
        return _Runner(self, input_ids, attention_mask)

    def gather_on_device(self, values: list, rows: np.ndarray) -> list:
        """Row-gather OrtValues where they live with a small ONNX graph (one Gather per tensor)."""
        key = tuple((len(v.shape()), v.data_type()) for v in values)
        if key not in self._gather:
            self._gather[key] = _gather_session(values, self.threads, self.device)
        session = self._gather[key]
        binding = session.io_binding()
        binding.bind_cpu_input("rows", rows.astype(np.int64))
        for i, value in enumerate(values):
            binding.bind_ortvalue_input(f"x{i}", value)
            binding.bind_output(f"y{i}", self.device)
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.get_outputs()

    # -- logits processors (HF order: bad words, min length, forced EOS)
    def _process(self, scores: np.ndarray, history: np.ndarray, cur_len: int, max_length: int) -> None:
        s = self.settings
        if s.single_bad:
            scores[:, self._single_bad] = NEG_INF
        for seq in s.multi_bad:
            prefix = np.asarray(seq[:-1])
            if cur_len >= len(prefix):
                hit = (history[:, cur_len - len(prefix):cur_len] == prefix).all(axis=1)
                scores[hit, seq[-1]] = NEG_INF
        if s.min_length and cur_len < s.min_length:
            scores[:, s.eos_token_ids] = NEG_INF
        if s.forced_eos_token_ids and cur_len == max_length - 1:
            scores[:] = NEG_INF
            scores[:, s.forced_eos_token_ids] = 0.0

    # -- search
    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, beams: int = 1,
                 max_length: int = 256, length_penalty: float = 1.0,
                 early_stopping: Union[bool, str] = True, prune: bool = True) -> list[list[int]]:
        """Token ids of the best hypothesis per sentence: without the decoder start token, with
        the final EOS (when one was generated), no padding. `max_length` counts the start token,
        as in `generate()`.

        `prune=True` drops finished sentences from the batch (faster). `prune=False` keeps them,
        fed padding as `generate()` does, so that int8 files (whose activation scales depend on
        the whole batch) give exactly `generate()`'s tokens at any batch size too."""
        input_ids = np.asarray(input_ids)
        attention_mask = np.asarray(attention_mask)
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise InputError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} "
                             "must be 2-D arrays of the same shape")
        if beams < 1:
            raise InputError(f"beams must be at least 1 (got {beams})")
        if early_stopping not in (True, False, "never"):
            raise InputError(f"early_stopping must be True, False or 'never' (got {early_stopping!r})")
        if input_ids.shape[0] == 0:
            return []
        if max_length < 2:
            return [[] for _ in range(input_ids.shape[0])]
        if beams == 1:
            return self._greedy(input_ids, attention_mask, max_length, prune)
        return self._beam(input_ids, attention_mask, beams, max_length, float(length_penalty), early_stopping, prune)

    def _eos_table(self, vocab: int) -> np.ndarray:
        table = np.zeros(max(vocab, max(self.settings.eos_token_ids) + 1), dtype=bool)
        table[list(self.settings.eos_token_ids)] = True
        return table

    def _greedy(self, input_ids, attention_mask, max_length: int, prune: bool) -> list[list[int]]:
        s = self.settings
        n = input_ids.shape[0]
        runner = self._runner(input_ids, attention_mask)
        history = np.full((n, max_length), s.pad_token_id, dtype=np.int64)
        history[:, 0] = s.decoder_start_token_id
        lengths = np.ones(n, dtype=np.int64)
        alive = np.arange(n)  # sentence of each decoder row
        active = np.ones(n, dtype=bool)  # rows still decoding (all of them when pruning)
        is_eos = None
        tokens = history[:, 0]
        cur_len = 1
        while True:
            scores = runner.step(tokens)
            if is_eos is None:
                is_eos = self._eos_table(scores.shape[1])
            self._process(scores, history[alive] if s.multi_bad else None, cur_len, max_length)
            tokens = scores.argmax(axis=1)
            if not prune:
                tokens[~active] = s.pad_token_id  # as generate() does for finished rows
            history[alive, cur_len] = tokens
            cur_len += 1
            lengths[alive[active]] = cur_len
            active &= ~is_eos[tokens]
            if cur_len >= max_length or not active.any():
                break
            if prune and not active.all():
                keep = np.flatnonzero(active)
                alive, tokens, active = alive[keep], tokens[keep], active[keep]
                runner.select(keep, sentences_changed=True)
        return [history[i, 1:lengths[i]].tolist() for i in range(n)]

    def _beam(self, input_ids, attention_mask, k: int, max_length: int, length_penalty: float,
              early_stopping, prune: bool) -> list[list[int]]:
        """HF's vectorised beam search (`GenerationMixin._beam_search`, transformers 4.57),
        step for step, in numpy. Arrays are (sentences, beams, ...) over the active sentences."""
        s = self.settings
        b = input_ids.shape[0]
        L = max_length
        runner = self._runner(input_ids, attention_mask)
        keep_k = max(2, 1 + len(s.eos_token_ids)) * k  # candidates kept per step, as in HF
        in_top_k = np.arange(keep_k) < k
        stop_on_early = early_stopping is True

        run_seq = np.full((b, k, L), s.pad_token_id, dtype=np.int64)
        run_seq[:, :, 0] = s.decoder_start_token_id
        run_score = np.zeros((b, k), dtype=np.float32)
        run_score[:, 1:] = BIG_NEG  # only the first beam is live at the start
        fin_seq = run_seq.copy()
        fin_score = np.full((b, k), BIG_NEG, dtype=np.float32)
        fin_len = np.zeros((b, k), dtype=np.int64)
        is_fin = np.zeros((b, k), dtype=bool)
        improvable = np.ones(b, dtype=bool)
        sentence = np.arange(b)  # original index of each active sentence
        results: list[list[int] | None] = [None] * b

        # Step 0: every beam of a sentence is identical; run one row per sentence, then repeat.
        logits = runner.step(np.full(b, s.decoder_start_token_id, dtype=np.int64))
        is_eos = self._eos_table(logits.shape[1])
        logits = np.repeat(logits, k, axis=0)
        runner.select(np.repeat(np.arange(b), k), sentences_changed=True)
        cur_len = 1
        while True:
            n = sentence.shape[0]
            rows = np.arange(n)[:, None]
            log_probs = _log_softmax(logits)
            self._process(log_probs, run_seq.reshape(n * k, L) if s.multi_bad else None, cur_len, L)
            vocab = log_probs.shape[1]
            acc = (log_probs.reshape(n, k, vocab) + run_score[:, :, None]).reshape(n, k * vocab)

            # top 2k continuations over all beams, best first
            part = np.argpartition(acc, -keep_k, axis=1)[:, -keep_k:]
            part_score = acc[rows, part]
            order = np.argsort(-part_score, axis=1, kind="stable")
            top, top_score = part[rows, order], part_score[rows, order]
            src_beam, top_tok = top // vocab, top % vocab
            top_seq = run_seq[rows, src_beam]
            top_seq[:, :, cur_len] = top_tok
            hits = is_eos[top_tok]
            if cur_len + 1 >= L:
                hits[:] = True

            # running beams for the next step: the best k that did not finish
            masked = np.where(hits, top_score + BIG_NEG, top_score)
            nxt = np.argsort(-masked, axis=1, kind="stable")[:, :k]
            run_seq, run_score, parent = top_seq[rows, nxt], masked[rows, nxt], src_beam[rows, nxt]

            # finished hypotheses: merge new ones (among the top k candidates) with the kept ones;
            # with nothing new finished the merge changes nothing observable and is skipped
            just = hits & in_top_k[None, :]
            if just.any():
                cand = top_score / np.float32(cur_len ** length_penalty)
                full = is_fin.all(axis=1) & stop_on_early
                cand = cand + full[:, None].astype(np.float32) * BIG_NEG
                cand = cand + (~improvable)[:, None].astype(np.float32) * BIG_NEG
                cand = cand + (~just).astype(np.float32) * BIG_NEG
                merged = np.concatenate([fin_score, cand], axis=1)
                best = np.argsort(-merged, axis=1, kind="stable")[:, :k]
                fin_score = merged[rows, best]
                fin_seq = np.concatenate([fin_seq, top_seq], axis=1)[rows, best]
                fin_len = np.concatenate([fin_len, np.full((n, keep_k), cur_len + 1, dtype=np.int64)],
                                         axis=1)[rows, best]
                is_fin = np.concatenate([is_fin, just], axis=1)[rows, best]

            cur_len += 1
            all_fin = is_fin.all(axis=1)
            best_len = L - 1 if early_stopping == "never" and length_penalty > 0.0 else cur_len - 1
            best_running = run_score[:, :1] / np.float32(best_len ** length_penalty)
            worst_finished = np.where(is_fin, fin_score.min(axis=1, keepdims=True), BIG_NEG)
            improvable &= (best_running > worst_finished).any(axis=1)
            done = ~improvable | (all_fin & stop_on_early)
            if cur_len >= L:
                done[:] = True
            elif not prune and not done.all():
                done[:] = False  # keep finished sentences in the batch, as generate() does
            if done.any():
                for j in np.flatnonzero(done):
                    results[sentence[j]] = fin_seq[j, 0, 1:fin_len[j, 0]].tolist()
                if done.all():
                    break
                keep = np.flatnonzero(~done)
                sentence, run_seq, run_score, parent = sentence[keep], run_seq[keep], run_score[keep], parent[keep]
                fin_seq, fin_score, fin_len = fin_seq[keep], fin_score[keep], fin_len[keep]
                is_fin, improvable = is_fin[keep], improvable[keep]
                runner.select((keep[:, None] * k + parent).reshape(-1), sentences_changed=True)
            else:
                flat = (rows * k + parent).reshape(-1)
                if not np.array_equal(flat, np.arange(flat.shape[0])):
                    runner.select(flat, sentences_changed=False)
            logits = runner.step(run_seq[:, :, cur_len - 1].reshape(-1))
        return results  # type: ignore[return-value]

    # -- text in, text out
    def translate(self, sentences: Sequence[str], beams: int = 1, batch_size: int = 32, max_length: int = 256,
                  length_penalty: float = 1.0, early_stopping: Union[bool, str] = True,
                  prune: bool = True, progress: bool = False) -> list[str]:
        """Translate in length-sorted batches; empty input lines give empty outputs (alignment
        kept). Same batching and output-length rule as `translate_torch`, so the two agree."""
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1 (got {batch_size})")
        tok = self.tokenizer
        out = [""] * len(sentences)
        batches = length_sorted_batches(sentences, batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="translate", unit="batch")
        for idx in batches:
            enc = tok([sentences[i] for i in idx], return_tensors="np", padding=True, truncation=True,
                      max_length=min(max_length, tok.model_max_length))
            limit = min(max_length, output_limit(enc["input_ids"].shape[1]))
            ids = self.generate(enc["input_ids"], enc["attention_mask"], beams=beams, max_length=limit,
                                length_penalty=length_penalty, early_stopping=early_stopping, prune=prune)
            for i, text in zip(idx, tok.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text
        return out


def _gather_session(values: list, threads: int, device: str):
    """A tiny ONNX graph: y_i = Gather(x_i, rows, axis=0), for reordering the cache on the device."""
    from onnx import TensorProto, helper

    types = {"tensor(float)": TensorProto.FLOAT, "tensor(float16)": TensorProto.FLOAT16}
    inputs = [helper.make_tensor_value_info("rows", TensorProto.INT64, ["n"])]
    outputs, nodes = [], []
    for i, value in enumerate(values):
        dtype = types[value.data_type()]
        rank = len(value.shape())
        inputs.append(helper.make_tensor_value_info(f"x{i}", dtype, [f"d{i}_{r}" for r in range(rank)]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", dtype, None))
        nodes.append(helper.make_node("Gather", [f"x{i}", "rows"], [f"y{i}"], axis=0))
    graph = helper.make_graph(nodes, "gather_rows", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return make_session_from_bytes(model.SerializeToString(), threads, device)


def _decoder_cache_shape(config_path: Path) -> tuple[int, int] | None:
    """(heads, head size) of the decoder's KV caches from the package's config.json, when it
    names a decoder width of its own (`decoder_d_model`, wdctl's narrow Marian: its caches have
    the decoder's width, not the encoder's `d_model`); None otherwise (the ONNX inputs say)."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    width, heads = config.get("decoder_d_model"), config.get("decoder_attention_heads")
    if not (isinstance(width, int) and isinstance(heads, int) and heads > 0 and width % heads == 0):
        return None
    return heads, width // heads
