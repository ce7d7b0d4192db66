"""Atomic outputs: write into a temporary sibling, rename into place only on success.

A directory wdctl creates carries a `.wdctl` marker, so `--force` replaces only outputs
wdctl wrote itself and never deletes a user's files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from wdctl.core.errors import InputError

MARKER = ".wdctl"


def run_dir_of(out: Path | str) -> Path:
    """Where a training command keeps the checkpoints, logs and config of the output `out`
    (its default `--run-dir`): `OUT.run` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".run")


def check_output_dir(path: Path, force: bool) -> None:
    """Refuse an existing output unless `force` and it is one wdctl wrote."""
    path = Path(path)
    if not path.exists():
        return
    if not force:
        raise InputError(f"{path}: output directory exists (pass --force to replace it)")
    if not path.is_dir() or not (path / MARKER).exists():
        raise InputError(f"{path}: exists and was not written by wdctl; refusing to replace it")


@contextlib.contextmanager
def atomic_dir(path: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` when the block succeeds.

    On an exception the temporary directory is removed and any previous `path` is untouched.
    """
    path = Path(path)
    check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        (tmp / MARKER).write_text("written by wdctl\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a text file through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # what open() would give, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
