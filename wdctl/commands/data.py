"""`wdctl data`: the bundled corpus and checks for users' own data."""

from __future__ import annotations

from pathlib import Path

import typer

from wdctl.app import app

data_app = typer.Typer(help="Build the bundled corpus or check your own parallel data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("bible")
def data_bible(
    out: Path = typer.Option(Path("examples/data/bible"), "--out", help="Where to write the corpus."),
    force: bool = typer.Option(False, "--force", help="Replace a corpus that wdctl wrote earlier."),
) -> None:
    """Rebuild the English–Spanish Bible corpus (KJV 1769 / Reina-Valera 1909) from Debian's
    SWORD modules. Needs `mod2imp` (apt-get install --no-install-recommends libsword-utils
    sword-text-kjv sword-text-sparv). The result already ships in examples/data/bible."""
    from wdctl.bible import build_bible_corpus

    for key, value in build_bible_corpus(out, force=force).items():
        typer.echo(f"{key}: {value}")


@data_app.command("check")
def data_check(
    data: str = typer.Argument(..., help="A TSV file (source<TAB>target), SRC,TGT text files, or a corpus directory."),
    split: str = typer.Option("train", "--split", help="Split to read from a corpus directory."),
) -> None:
    """Validate parallel data and print its size; exits 2 with the file and line of the first problem."""
    from wdctl.core.corpus import read_parallel

    pairs = read_parallel(data, split)
    words = sum(len(s.split()) + len(t.split()) for s, t in pairs)
    typer.echo(f"{data}: {len(pairs)} sentence pairs, {words} words")
