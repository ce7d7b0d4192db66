"""The ONNX package: the one place that knows which files a package holds.

A package is what `wdctl export` writes: `translator.onnx` (the whole search in one graph,
`wdctl.export.translator`), config, generation config and tokenizer files,
`export_report.json` (and `quantize_report.json` when quantized); with `--optimum` (and always
for `--device cuda` and fp16) also optimum's `encoder_model.onnx` and `decoder_model_merged.onnx`
(one decoder with and without KV cache), which `ORTModelForSeq2SeqLM.from_pretrained(package)`
loads with its defaults. A new graph is one more name in `GRAPHS`.
"""

from __future__ import annotations

from pathlib import Path

from wdctl.core.errors import InputError, WdctlError


class OnnxPackage:
    ENCODER = "encoder_model.onnx"
    DECODER = "decoder_model_merged.onnx"
    TRANSLATOR = "translator.onnx"  # wdctl's in-graph translator (built from the weights, not by optimum)
    OPTIMUM_GRAPHS = (ENCODER, DECODER)  # what optimum's exporter must write (ORTModelForSeq2SeqLM loads them)
    GRAPHS = (ENCODER, DECODER, TRANSLATOR)  # the graphs an export keeps
    # optimum also writes these; each stores the decoder weights again, and the merged decoder
    # serves both uses, so an export deletes them
    OPTIMUM_ONLY = ("decoder_model.onnx", "decoder_with_past_model.onnx")
    # other tools (optimum's quantizer with a suffix) name quantized files this way
    QUANTIZED = {ENCODER: "encoder_model_quantized.onnx", DECODER: "decoder_model_merged_quantized.onnx"}
    EXPORT_REPORT = "export_report.json"
    QUANTIZE_REPORT = "quantize_report.json"
    REPORTS = (EXPORT_REPORT, QUANTIZE_REPORT)

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OnnxPackage({str(self.path)!r})"

    @classmethod
    def is_package(cls, path: Path | str) -> bool:
        """True for a directory that holds an exported translator or encoder (e.g. `wdctl
        translate`'s choice)."""
        return (Path(path) / cls.TRANSLATOR).is_file() or (Path(path) / cls.ENCODER).is_file()

    def has_optimum(self) -> bool:
        """Whether optimum's encoder and decoder are here (standard or quantized names): what
        ORTModelForSeq2SeqLM (`load_optimum`) needs."""
        return all((self.path / name).is_file() or (self.path / self.QUANTIZED[name]).is_file()
                   for name in self.OPTIMUM_GRAPHS)

    @staticmethod
    def is_graph_file(path: Path) -> bool:
        """An ONNX graph or its external data."""
        return path.suffix == ".onnx" or path.name.endswith(".onnx_data")

    def graphs(self) -> list[Path]:
        """optimum's ONNX graphs of the package (what ORTQuantizer / the fp16 converter convert;
        none in a translator-only package); the translator has its own quantization
        (`quantize_translator`)."""
        files = sorted(p for p in self.path.glob("*.onnx") if p.name != self.TRANSLATOR)
        if not files and not self.has_translator():
            raise InputError(f"{self.path}: no .onnx files (export the model first with `wdctl export`)")
        return files

    def load_tokenizer(self):
        """The package's tokenizer (saved beside the graphs), with a one-line error if it is broken."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - any failure here means a broken package
            raise InputError(f"{self.path}: cannot load tokenizer ({str(exc).splitlines()[0]})") from None

    def missing(self, names: tuple[str, ...] = OPTIMUM_GRAPHS) -> list[str]:
        """Which of `names` (default: optimum's graphs, what the exporter must write) are absent."""
        return [name for name in names if not (self.path / name).is_file()]

    def has_translator(self) -> bool:
        return (self.path / self.TRANSLATOR).is_file()

    @property
    def translator(self) -> Path:
        """The in-graph translator (`OnnxTranslator` loads it)."""
        path = self.path / self.TRANSLATOR
        if not path.is_file():
            raise InputError(f"{self.path}: no {self.TRANSLATOR} (a package from an older wdctl: "
                             "export the model again with `wdctl export`)")
        return path

    def drop_optimum_only(self) -> None:
        for name in self.OPTIMUM_ONLY:
            for path in (self.path / name, self.path / f"{name}_data"):
                if path.exists():
                    path.unlink()

    def file_sizes(self) -> dict[str, int]:
        """Bytes of each graph file (external data included), by name."""
        return {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file() and self.is_graph_file(p)}

    def _first(self, name: str) -> Path:
        for candidate in (name, self.QUANTIZED[name]):
            if (self.path / candidate).is_file():
                return self.path / candidate
        found = sorted(p.name for p in self.path.glob("*.onnx"))
        hint = "; a translator-only package: export with `wdctl export --optimum` for optimum's files" \
            if self.has_translator() else ""
        raise WdctlError(f"{self.path}: no {name} or {self.QUANTIZED[name]} "
                         f"(found: {', '.join(found) or 'no .onnx files'}{hint})")

    @property
    def encoder(self) -> Path:
        """The encoder graph an onnxruntime session loads (standard or quantized name)."""
        return self._first(self.ENCODER)

    @property
    def decoder(self) -> Path:
        """The merged decoder graph an onnxruntime session loads (standard or quantized name)."""
        return self._first(self.DECODER)

    def loaded_files(self, translator: bool = False) -> list[Path]:
        """The files a translator loads (encoder, decoder and their external data; with
        `translator`, translator.onnx and its external data): the size on disk."""
        files = []
        for graph in ((self.translator,) if translator else (self.encoder, self.decoder)):
            files.append(graph)
            files.extend(p for p in graph.parent.iterdir()
                         if p != graph and p.name.startswith(graph.name) and p.suffix != ".onnx")
        return files
