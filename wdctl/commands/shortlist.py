"""`wdctl shortlist`: build a model's vocabulary shortlist for `wdctl export`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from wdctl.app import app
from wdctl.commands.options import ForceOpt


@app.command("shortlist")
def shortlist_command(
    model_dir: Path = typer.Argument(..., help="MarianMT directory (its tokenizer encodes the data)."),
    data: str = typer.Option(..., "--data", help="Parallel data: a corpus directory (its train split), a TSV file, or SRC,TGT files."),
    translations: List[str] = typer.Option([], "--translations", help="More pairs, e.g. the model's own translations of the training sources (a TSV such as `wdctl compress`'s distillation cache); repeatable."),
    frequent: int = typer.Option(256, "--frequent", help="The most frequent target pieces, always kept."),
    per_source: int = typer.Option(32, "--per-source", help="Target pieces kept per source piece (those its translations use most)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write it (default: MODEL_DIR/shortlist.json, where `wdctl export` looks)."),
    force: bool = ForceOpt,
) -> None:
    """Build a vocabulary shortlist: for each source piece, the target pieces its translations use most, plus the most frequent ones.

    `wdctl export` builds the translator to multiply only the batch's shortlisted rows of the output layer (sized here, from the data: the 95th percentile of a 16-sentence search's union) and writes the shortlist for CTranslate2 too (vmap.txt). `wdctl compress` writes one for every student.
    """
    from wdctl.recipes.shortlist import write_shortlist

    path, shortlist, pairs = write_shortlist(model_dir, data, translations=translations, frequent=frequent,
                                             per_source=per_source, out=out, force=force)
    typer.echo(f"{path}: {len(shortlist.frequent)} frequent + up to {per_source} per source piece, from {pairs} "
               f"pairs; the translator keeps {shortlist.size} of {shortlist.vocab_size} output rows per search")
