"""Packages for `wdctl bench`: each system (teacher, students) exported once per runtime.

ONNX fp32 and int8 (both made by `wdctl.export.build.build_package`; optimum's encoder and
decoder only when a backend that loads them, `ort-optimum`, is benched) and CTranslate2 int8
(when `ctranslate2` is importable), built into a cache directory that later runs reuse: a
`NAME.source.json` beside the packages records the weights they came from, and a package of
other weights is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from wdctl.core.atomic import MARKER, atomic_dir
from wdctl.core.errors import WdctlError
from wdctl.export.build import build_package
from wdctl.export.calibration import METADATA_KEY as ACTIVATION_RANGES
from wdctl.export.package import OnnxPackage
from wdctl.export.translator import translator_metadata
from wdctl.passes.marian import count_parameters, load_marian_config
from wdctl.passes.narrow_marian import ct2_unsupported
from wdctl.passes.shortlist import FILE as SHORTLIST_FILE
from wdctl.passes.shortlist import VMAP_FILE, Shortlist

PACKAGE_OF = {"torch": None, "ort-optimum": "fp32", "ort-graph": "fp32", "ort-graph-int8": "int8",
              "ort-graph-int8-sl": "int8-sl", "ct2": "ct2", "ct2-vmap": "ct2-vmap"}
GRAPH_BACKENDS = ("ort-graph", "ort-graph-int8", "ort-graph-int8-sl")  # these load the package's translator.onnx
SHORTLIST_KINDS = ("int8-sl", "ct2-vmap")  # built from the model directory's shortlist.json, where it has one
OPTIMUM_BACKENDS = ("ort-optimum",)  # these load optimum's encoder and decoder: exported only for them


@dataclass
class System:
    name: str
    role: str  # teacher | student
    model_dir: Path
    parameters: int = 0
    packages: dict[str, Path] = field(default_factory=dict)  # fp32 | int8 | ct2 → directory

    def model_for(self, backend: str) -> Path:
        kind = PACKAGE_OF[backend]
        return self.model_dir if kind is None else self.packages[kind]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "student"


def make_systems(teacher: Path, students: list[Path]) -> list[System]:
    systems = [System("teacher", "teacher", Path(teacher))]
    taken = {"teacher"}
    for path in students:
        path = Path(path)
        generic = path.name in ("model", "student", "out", "output", "") and path.parent.name
        base = _safe_name(f"{path.parent.name}-{path.name}" if generic else path.name)
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name)
        systems.append(System(name, "student", path))
    for system in systems:
        system.parameters = count_parameters(load_marian_config(system.model_dir))
    return systems


def ct2_available() -> bool:
    return importlib.util.find_spec("ctranslate2") is not None


def _fingerprint(model_dir: Path) -> dict:
    digest = hashlib.sha256()
    with open(model_dir / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    config = (model_dir / "config.json").read_bytes()
    shortlist = model_dir / SHORTLIST_FILE
    return {"model_dir": str(model_dir.resolve()), "weights_sha256": digest.hexdigest(),
            "config_sha256": hashlib.sha256(config).hexdigest(),
            "shortlist_sha256": hashlib.sha256(shortlist.read_bytes()).hexdigest() if shortlist.is_file() else None}


def _weights(stamp: dict) -> dict:
    return {k: stamp.get(k) for k in ("weights_sha256", "config_sha256", "shortlist_sha256")}


def _package_ready(path: Path, kind: str = "ct2", optimum: bool = False) -> bool:
    """A finished package; an ONNX one must hold the in-graph translator (older caches do not)
    and, with `optimum`, optimum's encoder and decoder (translator-only packages do not), and its
    translator int8's calibrated activation ranges (fp32) or scales (int8): a package cached
    before them would measure the per-call scales wdctl no longer writes; and a shortlisted
    translator must estimate the mass of the ids it leaves out (older ones renormalize)."""
    ready = path.is_dir() and (path / MARKER).is_file()
    if not ready or kind.startswith("ct2"):
        return ready
    package = OnnxPackage(path)
    if not package.has_translator() or (optimum and not package.has_optimum()):
        return False
    meta = translator_metadata(package.translator)
    if meta.get("wdctl.shortlist_size", "0") != "0" and "wdctl.shortlist_mass" not in meta:
        return False
    if kind == "fp32":
        return ACTIVATION_RANGES in meta
    return meta.get("wdctl.int8_activations") == "calibrated"


def convert_ct2(model_dir: Path, out: Path, force: bool = False, shortlist: bool = False) -> dict:
    """CTranslate2 int8 model (+ the tokenizer, so the directory stands alone); with `shortlist`,
    the model directory's shortlist as its vocabulary mapping (for `use_vmap=True`)."""
    import ctranslate2
    from transformers import AutoTokenizer

    with atomic_dir(out, force=force) as tmp:
        vmap = None
        if shortlist:
            table = Shortlist.load(model_dir / SHORTLIST_FILE)
            vmap = tmp.parent / f".{out.name}.{VMAP_FILE}"
            table.write_vmap(vmap, AutoTokenizer.from_pretrained(model_dir).convert_ids_to_tokens(
                list(range(table.vocab_size))))
        try:
            ctranslate2.converters.TransformersConverter(str(model_dir)).convert(
                str(tmp), vmap=None if vmap is None else str(vmap), quantization="int8", force=True)
        except Exception as exc:  # noqa: BLE001 - the converter raises many types
            raise WdctlError(f"{model_dir}: CTranslate2 conversion failed ({str(exc).splitlines()[0][:200]})") from None
        finally:
            if vmap is not None:
                vmap.unlink(missing_ok=True)
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
    return {"ct2": str(out)}


def prepare_packages(systems: list[System], backends: tuple[str, ...], cache: Path,
                     log=print) -> list[str]:
    """Export/quantize/convert what `backends` need into `cache`, reusing finished packages.

    Fills `system.packages`; returns notes (e.g. CTranslate2 skipped)."""
    notes: list[str] = []
    kinds = {PACKAGE_OF[b] for b in backends} - {None}
    optimum = any(b in OPTIMUM_BACKENDS for b in backends)
    if "int8" in kinds:
        kinds.add("fp32")
    for kind in ("ct2", "ct2-vmap"):
        if kind in kinds and not ct2_available():
            kinds.discard(kind)
            notes.append(f"{kind}: skipped, CTranslate2 is not installed (pip install 'wdctl[ct2]')")
    if not kinds:
        return notes
    cache.mkdir(parents=True, exist_ok=True)
    done_models: dict[Path, System] = {}
    for system in systems:
        same = done_models.get(system.model_dir.resolve())
        if same is not None:  # the same directory given twice: share its packages
            system.packages = dict(same.packages)
            continue
        done_models[system.model_dir.resolve()] = system
        stamp_path = cache / f"{system.name}.source.json"
        stamp = _fingerprint(system.model_dir)
        try:
            previous = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        # compared without the path (a moved directory of the same weights is fine) and notes
        fresh = previous is not None and _weights(previous) == _weights(stamp)
        system_notes = list(previous.get("notes", [])) if fresh else []
        paths = {kind: cache / f"{system.name}-{kind}" for kind in ("fp32", "int8", "int8-sl", "ct2", "ct2-vmap")}
        stale = not fresh and any(paths[k].exists() for k in kinds)
        if not fresh:  # a half-finished rebuild must not look fresh to the next run
            stamp_path.unlink(missing_ok=True)
        unsupported = ct2_unsupported(load_marian_config(system.model_dir))
        for kind in ("ct2", "ct2-vmap"):
            if kind in kinds and unsupported and f"{kind}: skipped, {unsupported}" not in system_notes:
                system_notes.append(f"{kind}: skipped, {unsupported}")
        has_shortlist = (system.model_dir / SHORTLIST_FILE).is_file()
        for kind in SHORTLIST_KINDS:
            note = f"{kind}: skipped, no {SHORTLIST_FILE} in the model directory (`wdctl shortlist`)"
            if kind in kinds and not has_shortlist and note not in system_notes:
                system_notes.append(note)
        for kind in ("fp32", "int8", "int8-sl", "ct2", "ct2-vmap"):
            if kind not in kinds or (kind.startswith("ct2") and unsupported) or \
                    (kind in SHORTLIST_KINDS and not has_shortlist):
                continue
            path = paths[kind]
            if fresh and _package_ready(path, kind, optimum=optimum and kind == "fp32"):
                log(f"{system.name}: reusing the {kind} package {path.name}")
            else:
                log(f"{system.name}: building the {kind} package {path.name}")
                force = stale or path.exists()
                if kind in ("fp32", "int8"):
                    # the export's check against PyTorch can fail on barely trained models (their
                    # beams tie): then it is exported unchecked, with a note, and the bench's own
                    # rows show how far ORT and PyTorch differ. These rows search the full vocabulary.
                    built = build_package(system.model_dir, paths["fp32"], path if kind == "int8" else None,
                                          mode="int8", force=force, export=kind == "fp32", lenient=True,
                                          optimum=optimum, shortlist=False)
                    if built.get("note"):
                        system_notes.append(built["note"])
                elif kind == "int8-sl":  # what `wdctl export` writes for a model with a shortlist
                    build_package(system.model_dir, None, path, mode="int8", force=force, lenient=True,
                                  optimum=False, shortlist=True)
                else:
                    convert_ct2(system.model_dir, path, force=force, shortlist=kind == "ct2-vmap")
            system.packages[kind] = path
        notes.extend(f"{system.name}: {note}" for note in system_notes)
        stamp_path.write_text(json.dumps({**stamp, "notes": system_notes}, indent=2) + "\n", encoding="utf-8")
    return notes


def loaded_files(system: System, backend: str) -> list[Path]:
    """The weight/graph files this backend loads (for the size on disk)."""
    if backend == "torch":
        return [system.model_dir / "model.safetensors"]
    if backend in ("ct2", "ct2-vmap"):
        return [system.packages[PACKAGE_OF[backend]] / "model.bin"]
    return OnnxPackage(system.model_for(backend)).loaded_files(translator=backend in GRAPH_BACKENDS)
