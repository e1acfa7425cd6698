"""Attribute files: validation with clear errors, and matching with the whole-phrase rule."""

from __future__ import annotations

import pytest

from curation.attributes import (
    AttributeFileError,
    AttributeMatcher,
    load_spec,
    parse_spec,
    resolve_entry_labels,
)
from curation.balancing.m4 import MomentLayout
from curation.matching import naive_match
from tests.m4_pool import ATTRIBUTES_YAML, FEMALE, LABELS, MALE, planted_captions


def test_the_example_file_parses(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(ATTRIBUTES_YAML)
    spec = load_spec(str(path))
    assert spec.group_names == ["gender/female", "gender/male"]
    assert spec.labels == tuple(LABELS)
    assert spec.attributes[0].target == "parity"
    assert (spec.epsilon_representation, spec.epsilon_association) == (0.01, 0.01)
    assert spec.min_label_count == 20 and spec.casefold
    again = type(spec).from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"attributes": {"g": {"a": ["x"]}}}, "attributes.g"),  # one group only
        ({"attributes": {"g": {"a": ["x"], "b": ["x"]}}}, "attributes.g.b"),  # shared keyword
        ({"attributes": {"g": {"a": ["x"], "b": [""]}}}, "attributes.g.b[0]"),
        ({"attributes": {"g": {"a": ["x"], "b": ["y"]}}, "colour": 1}, "colour"),
        (
            {"attributes": {"g": {"a": ["x"], "b": ["y"]}}, "targets": {"g": {"a": 0.5, "c": 1}}},
            "targets.g.c",
        ),
        ({"attributes": {"g": {"a": ["x"], "b": ["y"]}}, "targets": {"h": "parity"}}, "targets.h"),
        (
            {"attributes": {"g": {"a": ["x"], "b": ["y"]}}, "epsilon": {"association": 2}},
            "epsilon.association",
        ),
        ({"attributes": {"g": {"a": ["x"], "b": ["y"]}}, "labels": ["p", "p"]}, "labels"),
        ({"attributes": {"g": {"a": ["x"], "b": ["y"]}}, "min_label_count": -1}, "min_label_count"),
        (
            {"attributes": {"g": {"a": ["x"], "b": ["y"]}}, "labels": {"entries": {}}},
            "labels.entries",
        ),
        ({"attributes": {"g": {"a": ["x"], "b": ["y"]}}, "labels": {"entry": 3}}, "labels"),
        (
            {
                "attributes": {"g": {"a": ["x"], "b": ["y"]}},
                "labels": {"entries": {"min_count": 0}},
            },
            "labels.entries.min_count",
        ),
        (
            {
                "attributes": {"g": {"a": ["x"], "b": ["y"]}},
                "labels": {"entries": {"min_count": 5, "top": 3}},
            },
            "labels.entries",
        ),
    ],
)
def test_bad_files_name_the_file_and_key(raw, where):
    with pytest.raises(AttributeFileError) as err:
        parse_spec(raw, "attrs.yaml")
    assert str(err.value).startswith(f"attrs.yaml: {where}:")


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(AttributeFileError, match="not found"):
        load_spec(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("attributes: [unclosed\n")
    with pytest.raises(AttributeFileError, match=r"bad.yaml: not valid YAML"):
        load_spec(str(bad))


def test_case_folded_keywords_may_not_collide_across_groups():
    raw = {"attributes": {"g": {"a": ["He"], "b": ["he"]}}, "casefold": True}
    with pytest.raises(AttributeFileError, match="also in g.a"):
        parse_spec(raw, "f")
    parse_spec(raw | {"casefold": False}, "f")  # different keywords when case is kept


def test_attribute_matcher_follows_the_whole_phrase_rule(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(ATTRIBUTES_YAML)
    matcher = AttributeMatcher(load_spec(str(path)))
    captions = planted_captions(500, seed=3) + ["she's a nurses' aide", "Woman, nurse.", None]
    groups, labels = matcher.match_many(captions)
    for caption, g, lb in zip(captions, groups.to_pylist(), labels.to_pylist()):
        if caption is None:
            assert g == [] and lb == []
            continue
        want_g = sorted(
            {0 for _ in naive_match(caption, FEMALE, casefold=True)}
            | {1 for _ in naive_match(caption, MALE, casefold=True)}
        )
        assert g == want_g, caption
        assert lb == naive_match(caption, LABELS, casefold=True), caption
    assert matcher.match("Woman, nurse.") == ([0], [0])
    assert matcher.match("she's a nurses' aide") == ([], [])


def test_labels_from_entries_resolve_from_the_counts_without_the_group_keywords():
    """``labels: {entries: {min_count: N}}``: every entry with c_j ≥ N, except entries in which a
    group keyword occurs (whole-phrase, casefolded as the file says)."""
    raw = {
        "attributes": {"gender": {"female": ["woman", "she"], "male": ["man", "he"]}},
        "labels": {"entries": {"min_count": 10}},
        "casefold": True,
    }
    spec = parse_spec(raw, "attrs.yaml")
    assert spec.entry_labels and spec.labels == () and spec.label_entry_ids is None
    with pytest.raises(ValueError, match="resolved from the entry counts"):
        MomentLayout.of(spec)
    entries = ["nurse", "Young Woman", "doctor", "car", "woman", "mans", "He", "dog"]
    counts = [50, 40, 9, 10, 99, 12, 30, 0]
    resolved = resolve_entry_labels(spec, entries, counts)
    assert resolved.labels == ("nurse", "car", "mans")  # "mans" is not "man" (whole phrase)
    assert resolved.label_entry_ids == (0, 3, 5)
    assert resolved.excluded_label_entries == ("Young Woman", "woman", "He")
    again = type(spec).from_dict(resolved.to_dict())
    assert again == resolved
    assert type(spec).from_dict(spec.to_dict()) == spec
    layout = MomentLayout.of(resolved)
    assert layout.label_entries == (0, 3, 5)
    assert MomentLayout.from_dict(layout.to_dict()) == layout


def test_a_row_has_the_entry_labels_of_its_entry_ids():
    import pyarrow as pa

    layout = MomentLayout((0,), (2,), 3, (2, 5, 9))
    batch = pa.table(
        {"entry_ids": pa.array([[1, 2, 9], [], [5], [0, 3, 4], None], pa.list_(pa.int32()))}
    )
    indptr, ids = layout.label_csr(batch)
    rows = [ids[indptr[i] : indptr[i + 1]].tolist() for i in range(batch.num_rows)]
    assert rows == [[0, 2], [], [1], [], []]
