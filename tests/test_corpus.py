"""The bundled corpus is real and aligned; malformed user data gets one clear line and exit 2."""

import gzip
import subprocess
import sys

import pytest

from conftest import BIBLE
from wdctl.bible import aligned_pairs, clean_markup, parse_imp, split_pairs


def read_refs(split):
    with gzip.open(BIBLE / f"{split}.ref.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def test_bundled_corpus_size_and_splits(bible_pairs):
    from wdctl.core.corpus import read_parallel

    assert len(read_parallel(BIBLE, "all")) >= 30_000
    assert 900 <= len(bible_pairs["dev"]) <= 1100 and 900 <= len(bible_pairs["test"]) <= 1100
    held = {s for s, _ in bible_pairs["dev"] + bible_pairs["test"]}
    assert not held & {s for s, _ in bible_pairs["train"]}
    for split in ("train", "dev", "test"):
        assert len(read_refs(split)) == len(bible_pairs[split])


@pytest.mark.parametrize(
    "ref, english, spanish",
    [
        ("Genesis 1:1", "In the beginning God created the heaven and the earth.", "EN el principio crió Dios los cielos y la tierra."),
        ("John 11:35", "Jesus wept.", "Y lloró Jesús."),
        ("Jonah 1:17", None, None),  # a chapter the Spanish module versifies differently: dropped
    ],
)
def test_spot_check_by_reference(ref, english, spanish):
    from wdctl.core.corpus import read_parallel

    pairs = dict(zip(read_refs("all"), read_parallel(BIBLE, "all")))
    if english is None:
        assert ref not in pairs
    else:
        assert pairs[ref] == (english, spanish)


def test_test_pairs_are_translations_of_each_other(bible_pairs):
    """Names carry over between the languages: most test verses naming a person in English
    name them in Spanish too (a misaligned split would fail this)."""
    names = {"Jesus": "Jesús", "Moses": "Moisés", "David": "David", "Israel": "Israel", "Jerusalem": "Jerusalem"}
    checked = hits = 0
    for en, es in bible_pairs["test"]:
        for name, spanish in names.items():
            if f" {name} " in f" {en} ":
                checked += 1
                hits += spanish in es
    assert checked > 50 and hits / checked > 0.85


def test_markup_is_stripped():
    raw = ('<div sID="x" type="x-p"/>¶ And <w lemma="strong:H0430">God</w> said<note placement="foot">'
           '<reference>1.4 </reference>Heb. note</note>, <title type="psalm">A heading</title>¿<w>Qué</w> ?')
    assert clean_markup(raw) == "And God said, ¿Qué?"


def test_alignment_drops_a_shifted_chapter():
    dump_en = "$$$Jonah 1:1\n<w lemma=\"strong:H1\">a</w>\n$$$Jonah 1:2\n<w lemma=\"strong:H2\">b</w>\n" \
              "$$$Jonah 2:1\n<w lemma=\"strong:H3\">c</w>\n$$$Jonah 2:2\n<w lemma=\"strong:H4\">d</w>\n"
    dump_es = "$$$Jonah 1:1\n<w lemma=\"strong:H1\">A</w>\n$$$Jonah 1:2\n\n" \
              "$$$Jonah 2:1\n<w lemma=\"strong:H2\">B</w>\n$$$Jonah 2:2\n<w lemma=\"strong:H3\">C</w> <w lemma=\"strong:H4\">D</w>\n"
    pairs, dropped = aligned_pairs(parse_imp(dump_en), parse_imp(dump_es))
    assert dropped == ["Jonah 1", "Jonah 2"] and pairs == []


def test_split_is_deterministic_and_deduplicated():
    pairs = [(f"r{i}", f"s{i % 50}", f"t{i % 50}") for i in range(100)] + [(f"q{i}", f"u{i}", f"v{i}") for i in range(3000)]
    a, b = split_pairs(pairs, heldout=100), split_pairs(pairs, heldout=100)
    assert a == b
    assert len({(p[1], p[2]) for p in a["train"]}) == len(a["train"])


# --- users' own data: one clear line naming file (and line), exit 2 --------------------------------

BAD_CASES = {
    "wrong column count": ("a.tsv", b"one\tuno\ntwo\tdos\textra\n", None, "a.tsv:2: expected 2 tab-separated columns"),
    "empty source side": ("a.tsv", b"one\tuno\n\tdos\n", None, "a.tsv:2: empty source side"),
    "whitespace-only target": ("a.tsv", b"one\tuno\ntwo\t   \n", None, "a.tsv:2: empty target side"),
    "non-UTF-8 bytes": ("a.tsv", b"one\tuno\ntwo\tdos \xff\xfe\n", None, "a.tsv:2: not valid UTF-8"),
    "empty corpus": ("a.tsv", b"", None, "a.tsv: empty corpus"),
    "line-count mismatch": ("a.en", b"one\ntwo\nthree\n", b"uno\ndos\n", "a.en has 3 lines but"),
    "empty line in aligned files": ("a.en", b"one\n\nthree\n", b"uno\ndos\ntres\n", "line 2: empty source side"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_malformed_data_is_rejected_with_one_line(case, tmp_path, cli):
    name, content, target, message = BAD_CASES[case]
    src = tmp_path / name
    src.write_bytes(content)
    spec = str(src)
    if target is not None:
        (tmp_path / "a.es").write_bytes(target)
        spec = f"{src},{tmp_path / 'a.es'}"
    code, out, err = cli("data", "check", spec)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_file_and_one_line_corpus_for_training(tmp_path, cli):
    code, _, err = cli("data", "check", tmp_path / "nope.tsv")
    assert code == 2 and "nope.tsv: file not found" in err
    one = tmp_path / "one.tsv"
    one.write_text("one\tuno\n", encoding="utf-8")
    code, _, err = cli("teacher", "train", "--data", one, "--out", tmp_path / "t", "--preset", "tiny")
    assert code == 2 and "1 sentence pair(s); at least 2 are needed" in err
    assert not (tmp_path / "t").exists()


def test_good_data_is_accepted(tmp_path, cli):
    (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "a.es").write_text("uno\ndos\n", encoding="utf-8")
    code, out, _ = cli("data", "check", f"{tmp_path / 'a.en'},{tmp_path / 'a.es'}")
    assert code == 0 and "2 sentence pairs" in out


def test_console_script_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "wdctl", "data", "check", str(tmp_path / "x.tsv")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("wdctl: error:") and "Traceback" not in result.stderr
