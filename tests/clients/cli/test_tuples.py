"""`megaclass tuples generate` (a tuple file from an image catalogue or the glyph set, read back by the loader)
and `megaclass mine-negatives` (tiers of a saved index, quantile or fixed bands)."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.clients.cli.main import build_parser
from megaclass.export.config import IndexConfig
from megaclass.export.data.catalog import write_catalog_csv
from megaclass.export.data.tuples import load_tuples
from megaclass.export.train.negatives import read_tiers
from megaclass.python_backend.index.routed_index import RoutedIndex
from tests.export.data.test_catalog import image_catalogue


def run(*argv: str) -> int:
    """`megaclass ARGV` as the installed command parses it."""
    args = build_parser().parse_args(list(argv))
    return args.func(args)


def test_generate_from_a_catalogue_writes_image_paths(tmp_path, capsys):
    catalog = image_catalogue(tmp_path, classes=4, per_class=3)
    out = tmp_path / "runs" / "triplets.csv"
    assert run("tuples", "generate", "--out", str(out), "--catalog", str(catalog), "--count", "25") == 0
    assert "25 triplets over 12 items of 4 classes" in capsys.readouterr().out
    ts = load_tuples(out, image_size=16)
    assert len(ts) == 25 and ts.kind == "triplets" and not (tmp_path / "runs" / "triplets.npy").exists()
    class_of = {item: int(item.split("/")[-1].split("_")[0]) for item in ts.items}  # img/<class>_<j>.png
    assert all(item.startswith("../img/") and not item.endswith("_3.png") for item in ts.items)  # train rows only
    cls = np.array([[class_of[ts.items[i]] for i in t] for t in ts.tuples])
    assert (cls[:, 0] == cls[:, 1]).all() and (cls[:, 0] != cls[:, 2]).all()


@pytest.mark.slow
def test_generate_from_glyphs_writes_the_array(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(f'work_dir = "{tmp_path / "work"}"\n[glyphs]\nworkers = 1\nheld_out_class_fraction = 0.25\n')
    out = tmp_path / "pairs.csv"
    argv = ("--config", str(config), "tuples", "generate", "--out", str(out), "--kind", "pairs", "--max-classes", "8")
    assert run(*argv, "--quiet") == 0
    printed = capsys.readouterr().out
    assert f"--array {tmp_path / 'pairs.npy'}" in printed
    array = np.load(tmp_path / "pairs.npy")
    ts = load_tuples(out, tmp_path / "pairs.npy")
    assert len(ts) == len(array)  # default count: 1.0 x training images
    assert ts.kind == "pairs" and 0 < ts.similar.sum() < len(ts)


def test_generate_refuses_an_embedding_catalogue(tmp_path, capsys):
    ids = np.repeat([1, 2], 2)
    path = write_catalog_csv(tmp_path / "e.csv", ids, [str(i) for i in ids], embeddings=np.eye(4, dtype=np.float32))
    assert run("tuples", "generate", "--out", str(tmp_path / "t.csv"), "--catalog", str(path)) == 1
    assert "embedding catalogue has no images" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_generate_kind_is_checked_by_the_parser(tmp_path):
    with pytest.raises(SystemExit):
        run("tuples", "generate", "--out", str(tmp_path / "t.csv"), "--kind", "quadruplets")


def test_mine_negatives_bands_by_quantile_or_fixed(tmp_path, capsys):
    angles = np.deg2rad([0, 20, 55, 95])  # scores of the 6 pairs: 0.94 0.82 0.77 0.57 0.26 -0.09
    protos = np.stack([np.cos(angles), np.sin(angles), 0 * angles], axis=1).astype(np.float32)
    ids = np.array([10, 11, 12, 13])
    RoutedIndex.build(protos, ids, {int(c): str(c) for c in ids}, IndexConfig(nlist=1, nprobe=1)).save(tmp_path / "ix")
    base = ("mine-negatives", "--index", str(tmp_path / "ix"), "--neighbours", "3")
    assert run(*base, "--out", str(tmp_path / "q.csv")) == 0
    assert "easy 4, soft 4, hard 4" in capsys.readouterr().out
    assert run(*base, "--out", str(tmp_path / "f.csv"), "--hard-min", "0.75") == 0
    printed = capsys.readouterr().out
    assert "easy 4, soft 2, hard 6" in printed and "bands (fixed): soft from score 0.5000, hard from 0.7500" in printed
    assert read_tiers(tmp_path / "f.csv").counts() == {"easy": 4, "soft": 2, "hard": 6}
    assert run(*base, "--out", str(tmp_path / "x.csv"), "--soft-quantile", "0.9", "--hard-quantile", "0.1") == 1
    assert "soft_quantile" in capsys.readouterr().err
