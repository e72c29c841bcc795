"""Tuple files: the format, bad rows with their line numbers, generation from labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from megaclass.export.data.tuples import (
    TupleFileError,
    generate_tuple_file,
    load_tuples,
    tuples_from_labels,
    write_tuples,
)


@pytest.fixture
def array() -> np.ndarray:
    return (np.arange(10)[:, None, None] * np.ones((1, 8, 8))).astype(np.uint8)


def _write(tmp_path, text: str):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


def test_triplets_by_row_share_items(tmp_path, array):
    ts = load_tuples(_write(tmp_path, "# comment\nanchor,positive,negative\n0,1,5\n\n1, 0 ,7\n"), array)
    assert ts.kind == "triplets" and ts.similar is None
    assert ts.tuples.tolist() == [[0, 1, 2], [1, 0, 3]]
    assert [int(im[0, 0]) for im in ts.images] == [0, 1, 5, 7]


def test_pairs_with_image_paths(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
    ts = load_tuples(_write(tmp_path, "a,b,similar\nimg/0.png,img/1.png,1\nimg/0.png,img/2.png,0\n"), image_size=8)
    assert ts.kind == "pairs" and ts.similar.tolist() == [True, False]
    assert ts.images.shape == (3, 8, 8) and int(ts.images[2, 4, 4]) == 80


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,c\n0,1,2\n", r"t\.csv:1: header 'a,b,c' names no tuple kind"),
        ("anchor,positive,negative\n0,1,2\n0,1\n", r"t\.csv:3: 2 fields, a triplets row has 3"),
        ("a,b,similar\n0,1,yes\n", r"t\.csv:2: similar must be 0 or 1, got 'yes'"),
        ("anchor,positive,negative\n0,,2\n", r"t\.csv:2: empty item"),
        ("anchor,positive,negative\n0,1,99\n", r"t\.csv:2: row 99 is past the array file's 10 rows"),
        ("anchor,positive,negative\n\n0,0,2\n", r"t\.csv:3: an item appears twice"),
        ("anchor,positive,negative\n0,1,missing.png\n", r"t\.csv:2: image 'missing.png' not found"),
        ("# nothing\n", r"empty tuple file"),
        ("a,b,similar\n", r"header but no tuples"),
    ],
)
def test_bad_rows_name_line_and_reason(tmp_path, array, text, match):
    with pytest.raises(TupleFileError, match=match):
        load_tuples(_write(tmp_path, text), array)


def test_row_items_need_an_array(tmp_path):
    with pytest.raises(TupleFileError, match=r"t\.csv:2: item '3' is a row number, but no array file"):
        load_tuples(_write(tmp_path, "anchor,positive,negative\n3,4,5\n"))


@pytest.mark.parametrize("kind", ["pairs", "triplets"])
def test_generated_tuples_follow_the_labels_and_round_trip(tmp_path, array, kind):
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    rows, similar = tuples_from_labels(labels, kind, 200, seed=1)
    if kind == "triplets":
        assert (labels[rows[:, 0]] == labels[rows[:, 1]]).all() and (labels[rows[:, 0]] != labels[rows[:, 2]]).all()
        assert (rows[:, 0] != rows[:, 1]).all()
    else:
        assert ((labels[rows[:, 0]] == labels[rows[:, 1]]) == similar).all()
        assert 60 < similar.sum() < 140
    ts = load_tuples(write_tuples(tmp_path / "g.csv", kind, rows, similar), array)
    assert len(ts) == 200 and ts.kind == kind
    first = [int(ts.images[i][0, 0]) for i in ts.tuples[0]]
    assert first == rows[0].tolist()


def test_generated_file_with_rows_saves_the_array_beside_it(tmp_path, array):
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    path, saved = generate_tuple_file(tmp_path / "out" / "t.csv", "triplets", labels, 30, seed=2, images=array)
    assert saved == tmp_path / "out" / "t.npy" and np.array_equal(np.load(saved), array)
    ts = load_tuples(path, saved)
    item_label = labels[[int(i) for i in ts.items]]
    assert (item_label[ts.tuples[:, 0]] == item_label[ts.tuples[:, 1]]).all()
    assert (item_label[ts.tuples[:, 0]] != item_label[ts.tuples[:, 2]]).all()


def test_generated_file_with_paths_is_relative_to_it(tmp_path):
    (tmp_path / "img").mkdir()
    paths = []
    for i in range(4):
        paths.append(tmp_path / "img" / f"{i}.png")
        Image.fromarray(np.full((8, 8), 50 * i, np.uint8)).save(paths[-1])
    path, saved = generate_tuple_file(tmp_path / "sub" / "p.csv", "pairs", np.array([0, 0, 1, 1]), 12, paths=paths)
    assert saved is None and "../img/" in path.read_text()
    ts = load_tuples(path, image_size=8)
    assert ts.kind == "pairs" and len(ts) == 12
    shade = {f"../img/{i}.png": i // 2 for i in range(4)}  # class of each file
    same = np.array([shade[ts.items[a]] == shade[ts.items[b]] for a, b in ts.tuples])
    assert (same == ts.similar).all()


def test_generated_file_refuses_what_the_format_cannot_hold(tmp_path, array):
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="comma"):
        generate_tuple_file(tmp_path / "t.csv", "pairs", labels, 4, paths=[tmp_path / f"a,{i}.png" for i in range(4)])
    with pytest.raises(ValueError, match="not both or neither"):
        generate_tuple_file(tmp_path / "t.csv", "pairs", labels, 4)
    with pytest.raises(ValueError, match="at least 1"):
        generate_tuple_file(tmp_path / "t.csv", "pairs", labels, 0, images=array[:4])
