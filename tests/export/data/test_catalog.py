"""Bring-your-own catalogues: parsing, checks, and use by training, prototypes and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from megaclass.export.config import IndexConfig, load_config
from megaclass.export.data.catalog import CatalogError, read_catalog, write_catalog_csv
from megaclass.export.data.data_sources import DataSpec, eval_sets_from_spec
from megaclass.export.evaluate.evaluation import evaluate_sets
from megaclass.export.train.from_spec import train_from_spec

SIZE = 16


def image_catalogue(folder, classes: int, per_class: int, queries: int = 1, name: str = "cat.csv"):
    """PNG files of per-class block patterns (dark ink on white, as scanned: load_image inverts it)."""
    rng = np.random.default_rng(0)
    patterns = np.kron(rng.random((classes, 4, 4)) > 0.5, np.ones((4, 4)))
    ids, labels, paths, splits = [], [], [], []
    for c in range(classes):
        for j in range(per_class + queries):
            img = np.roll(patterns[c], rng.integers(-1, 2, 2), axis=(0, 1)) * 0.8 + rng.random((SIZE, SIZE)) * 0.2
            p = folder / "img" / f"{c}_{j}.png"
            p.parent.mkdir(exist_ok=True)
            Image.fromarray((255 - img * 255).astype(np.uint8)).save(p)
            ids.append(100 + c)
            labels.append(f"class {c}")
            paths.append(f"img/{c}_{j}.png")
            splits.append("train" if j < per_class else "query")
    return write_catalog_csv(folder / name, np.array(ids), labels, paths=paths, splits=splits)


def test_read_image_catalogue(tmp_path):
    cat = read_catalog(image_catalogue(tmp_path, 3, 2))
    assert cat.kind == "images" and len(cat) == 9
    assert cat.labels == {100: "class 0", 101: "class 1", 102: "class 2"}
    assert cat.rows("query").tolist() == [2, 5, 8]
    imgs = cat.images(cat.rows("train"), SIZE)
    assert imgs.shape == (6, SIZE, SIZE) and imgs.dtype == np.uint8
    assert imgs.mean() < 127  # dark-on-light files come back glyph-bright on dark


def test_read_embedding_catalogue_inline_floats(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text('class_id,label,embedding\n1,a,"1 0 0"\n1,a,"0.9 0.1 0"\n2,b,"0 1 -2.5e-1"\n')
    cat = read_catalog(path)
    assert cat.kind == "embeddings" and cat.splits.tolist() == ["train"] * 3
    np.testing.assert_allclose(cat.embeddings[2], [0, 1, -0.25])
    assert cat.class_ids.tolist() == [1, 1, 2]


@pytest.mark.parametrize(
    "text, message",
    [
        ("class_id,label\n1,a\n", "exactly one of"),
        ("class_id,label,path,embedding\n1,a,x.png,1 2\n", "exactly one of"),
        ("label,path\na,x.png\n", "missing column"),
        ("class_id,label,embedding\n1,a,1 2\n2,b,1 2 3\n", "same, non-zero length"),
        ("class_id,label,embedding\n1,a,1 2\n1,b,1 2\n", "has label 'b'"),
        ("class_id,label,embedding,split\n1,a,1 2,test\n", "unknown split"),
        ("class_id,label,embedding\nx,a,1 2\n", "integers"),
        ("class_id,label,embedding\n1,a,one two\n", "space-separated floats"),
    ],
)
def test_bad_catalogues(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        read_catalog(path)


def test_parquet(tmp_path):
    path = tmp_path / "c.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        try:
            import pandas  # noqa: F401
        except ImportError:
            with pytest.raises(CatalogError, match="needs pyarrow"):
                read_catalog(path)
            return
        pytest.skip("pandas without pyarrow: engine-dependent")
    pq.write_table(pa.table({"class_id": [1, 2], "label": ["a", "b"], "embedding": [[1.0, 0.0], [0.0, 1.0]]}), path)
    cat = read_catalog(path)
    assert cat.embeddings.shape == (2, 2) and cat.labels == {1: "a", 2: "b"}


def test_embedding_catalogue_evaluates_without_encoder(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(5), 3)
    emb = np.eye(5)[ids] + rng.normal(0, 0.05, (15, 5))
    splits = ["train", "train", "query"] * 5
    path = write_catalog_csv(tmp_path / "e.csv", ids, [str(i) for i in ids], embeddings=emb, splits=splits)
    cfg = load_config(None, {"work_dir": str(tmp_path)})
    sets = eval_sets_from_spec(DataSpec(kind="catalog", catalog=str(path)), cfg, None)
    report, _ = evaluate_sets(None, sets, IndexConfig(nlist=2), ks=(1,))
    assert report["splits"]["seen_classes"]["precision_at_1"] == 1.0
    assert report["splits"]["held_out_classes"]["queries"] == 0


def test_train_on_image_catalogue_then_enrol_new_classes(tmp_path):
    """Train on 6 classes of a catalogue; evaluate with a catalogue that adds 2 never-trained classes."""
    image_catalogue(tmp_path, 8, 6, name="all.csv")
    all_rows = (tmp_path / "all.csv").read_text().splitlines()
    keep = [r for r in all_rows[1:] if int(r.split(",")[0]) < 106]
    (tmp_path / "train.csv").write_text("\n".join([all_rows[0], *keep]) + "\n")
    cfg = load_config(
        None,
        {
            "work_dir": str(tmp_path),
            "augment": {"enabled": False},
            "train": {"embedding_dim": 16, "width": 4, "epochs": 2, "batch_size": 24, "threads": 1, "lr": 5e-3},
        },
    )
    spec = DataSpec(kind="catalog", catalog=str(tmp_path / "train.csv"), image_size=SIZE)
    result = train_from_spec(spec, cfg, tmp_path / "run", progress=False)
    assert len(result.history) == 2 and "precision_at_1" in result.history[-1]
    assert (tmp_path / "run" / "run.json").exists()
    spec_all = DataSpec(kind="catalog", catalog=str(tmp_path / "all.csv"), image_size=SIZE)
    import torch

    ckpt = torch.load(result.checkpoint_path, weights_only=True)
    sets = eval_sets_from_spec(spec_all, cfg, np.asarray(ckpt["classes"]))
    report, _ = evaluate_sets(result.model, sets, IndexConfig(nlist=2), ks=(1, 3))
    s = report["splits"]
    assert s["seen_classes"]["queries"] == 6 and s["held_out_classes"]["queries"] == 2
    assert report["enrolled_classes"] == 8


def test_cli_evaluate_and_prototypes_of_embedding_catalogue(tmp_path):
    """No encoder: `megaclass evaluate --catalog` scores the embeddings, `prototypes --index` builds an index."""
    from megaclass.python_backend.index.routed_index import RoutedIndex

    from ...clients.cli.test_train import run

    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(6), 3)
    emb = np.eye(6)[ids] + rng.normal(0, 0.05, (18, 6))
    path = write_catalog_csv(
        tmp_path / "e.csv", ids, [f"c{i}" for i in ids], embeddings=emb, splits=["train", "train", "query"] * 6
    )
    config = tmp_path / "c.toml"
    config.write_text(f'work_dir = "{tmp_path}"\n[index]\nnlist = 2\n')
    assert (
        run("--config", str(config), "evaluate", "--catalog", str(path), "--out", str(tmp_path / "ev"), "--quiet") == 0
    )
    import json

    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["splits"]["seen_classes"]["precision_at_1"] == 1.0
    argv = ("prototypes", "--catalog", str(path), "--out", str(tmp_path / "p"), "--index", str(tmp_path / "idx"))
    assert run("--config", str(config), *argv, "--quiet") == 0
    protos = np.load(tmp_path / "p" / "prototypes.npy")
    assert protos.shape == (6, 6)
    assert (tmp_path / "p" / "labels.txt").read_text().splitlines() == [f"c{i}" for i in range(6)]
    index = RoutedIndex.load(tmp_path / "idx")
    assert index.num_classes == 6
    # training needs images: an embedding catalogue is refused with a message, not a traceback
    assert run("--config", str(config), "train", "--catalog", str(path), "--out", str(tmp_path / "r"), "--quiet") == 1


def test_parquet_columns_as_pyarrow_returns_them(tmp_path, monkeypatch):
    """The Parquet path without pyarrow installed: a stand-in `pyarrow.parquet` returns what
    `read_table(path).to_pydict()` gives (ints, strings, list<float> embeddings, image paths)."""
    import sys
    import types

    tables = {
        "e.parquet": {"class_id": [4, 4, 9], "label": ["x", "x", "y"], "embedding": [[1.0, 0.0], [0.5, 0.5], [0, 1]]},
        "i.parquet": {
            "class_id": [1, 2],
            "label": ["a", "b"],
            "path": ["img/a.png", "img/b.png"],
            "split": ["train", "query"],
        },
    }
    pq = types.ModuleType("pyarrow.parquet")
    pq.read_table = lambda path: types.SimpleNamespace(to_pydict=lambda: tables[path.name])
    pa = types.ModuleType("pyarrow")
    pa.parquet = pq
    monkeypatch.setitem(sys.modules, "pyarrow", pa)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", pq)
    for name in tables:
        (tmp_path / name).write_bytes(b"PAR1")
    emb = read_catalog(tmp_path / "e.parquet")
    assert emb.kind == "embeddings" and emb.labels == {4: "x", 9: "y"}
    np.testing.assert_allclose(emb.embeddings, [[1, 0], [0.5, 0.5], [0, 1]])
    assert emb.embeddings.dtype == np.float32 and emb.rows("train").tolist() == [0, 1, 2]
    img = read_catalog(tmp_path / "i.parquet")
    assert img.kind == "images" and img.rows("query").tolist() == [1]
    assert img.paths[0] == (tmp_path / "img" / "a.png").resolve()
