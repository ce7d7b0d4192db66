"""The lexical shortlist: what it keeps, a batch's candidates, its files."""

import pytest

from wdctl.core.errors import InputError
from wdctl.passes.shortlist import Shortlist, build_shortlist, coverage

# source ids 10-13, target ids 0-9; 1 = "the" (in every translation), 5 always with 12, 6 with 13
PAIRS = [([10, 12], [1, 5, 2]), ([12, 11], [1, 5]), ([13], [1, 6]), ([13, 10], [1, 6, 2]), ([11], [1, 3])]


def test_frequent_targets_are_kept_and_each_source_lists_its_other_best_targets():
    sl = build_shortlist(PAIRS, 14, 10, frequent=1, per_source=1, exclude=[0])
    assert sl.frequent == (1,)
    assert sl.per_source[12] == (5,) and sl.per_source[13] == (6,)
    assert 1 not in {t for ts in sl.per_source.values() for t in ts}  # frequent ones are not repeated
    assert sl.per_source[11] == (5,) or sl.per_source[11] == (3,)
    assert all(0 not in ts for ts in sl.per_source.values())


def test_candidates_are_the_union_with_special_ids_padded_to_a_multiple():
    sl = build_shortlist(PAIRS, 14, 10, frequent=1, per_source=1, exclude=[0])
    got = sl.candidates([12, 13], always=[0, 9], multiple_of=1)
    assert list(got) == [0, 1, 5, 6, 9]
    padded = sl.candidates([12, 13], always=[0, 9], multiple_of=4)
    assert len(padded) == 8 and set(got) <= set(padded) and list(padded) == sorted(padded)


def test_coverage_counts_target_tokens_inside_their_batch_shortlist():
    sl = build_shortlist(PAIRS, 14, 10, frequent=1, per_source=1, exclude=[0])
    full = coverage(sl, [([12], [1, 5]), ([13], [1, 6])], batch_size=1, multiple_of=1)
    assert full["token_coverage"] == 1.0 and full["batches"] == 2
    assert coverage(sl, [([12], [1, 6])], batch_size=1, multiple_of=1)["token_coverage"] == 0.5


def test_round_trip_and_ctranslate2_vocabulary_map(tmp_path):
    sl = build_shortlist(PAIRS, 14, 10, frequent=2, per_source=2)
    sl.save(tmp_path / "shortlist.json")
    assert Shortlist.load(tmp_path / "shortlist.json") == sl
    source = [f"s{i}" for i in range(14)]
    target = [f"t{i}" for i in range(10)]
    sl.write_vmap(tmp_path / "vmap.txt", source, target)
    lines = (tmp_path / "vmap.txt").read_text().splitlines()
    assert lines[0] == "\t" + " ".join(target[t] for t in sl.frequent)  # always-kept pieces: the empty key
    rules = dict(line.split("\t") for line in lines[1:])
    assert rules["s12"].split() == [target[t] for t in sl.per_source[12]]


def test_a_bad_shortlist_file_is_one_line_error(tmp_path):
    path = tmp_path / "shortlist.json"
    path.write_text('{"vocab_size": 4, "frequent": [9], "per_source": {}}')
    with pytest.raises(InputError, match="shortlist.json: target id outside the vocabulary of 4"):
        Shortlist.load(path)
    path.write_text("{")
    with pytest.raises(InputError, match="unreadable shortlist"):
        Shortlist.load(path)
