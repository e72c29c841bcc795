"""`megaclass index build | tune | search` on a user's own embeddings files."""

from __future__ import annotations

import json

import numpy as np

from megaclass.clients.cli.main import main


def _write_files(tmp_path, rows: int, num_labels: int, queries: int, seed: int) -> None:
    """P.npy (unit rows, 16-d), L.txt (row i: class-{i % num_labels}) and Q.npy (the first rows)."""
    protos = np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    np.save(tmp_path / "P.npy", protos)
    (tmp_path / "L.txt").write_text("\n".join(f"class-{i % num_labels}" for i in range(rows)))
    np.save(tmp_path / "Q.npy", protos[:queries])


def test_build_tune_search_round_trip(tmp_path, capsys):
    _write_files(tmp_path, rows=300, num_labels=250, queries=40, seed=0)
    idx = tmp_path / "ix"
    assert main(["index", "build", "--prototypes", str(tmp_path / "P.npy"), "--labels", str(tmp_path / "L.txt"),
                 "--out", str(idx), "--nlist", "8"]) == 0  # fmt: skip
    assert "250 classes, 300 prototypes" in capsys.readouterr().out
    assert main(["index", "tune", "--index", str(idx), "--queries", str(tmp_path / "Q.npy")]) == 0
    out = tmp_path / "R.npz"
    assert main(["index", "search", "--index", str(idx), "--queries", str(tmp_path / "Q.npy"), "--top-k", "3",
                 "--out", str(out), "--nprobe", "8"]) == 0  # fmt: skip
    r = np.load(out)
    assert r["class_ids"].shape == (40, 3)
    # each query is a prototype itself: with every cluster probed its class comes first, score 1
    assert list(r["labels"][:, 0]) == [f"class-{i % 250}" for i in range(40)]
    np.testing.assert_allclose(r["scores"][:, 0], 1.0, atol=1e-5)
    # a probe margin no route score gap reaches keeps all 8 probes: the same answer; a margin of 0 probes one
    for margin, same in (("100", True), ("0", False)):
        assert main(["index", "search", "--index", str(idx), "--queries", str(tmp_path / "Q.npy"), "--top-k", "3",
                     "--out", str(tmp_path / "M.npz"), "--nprobe", "8", "--probe-margin", margin]) == 0  # fmt: skip
        m = np.load(tmp_path / "M.npz")
        assert np.array_equal(m["class_ids"], r["class_ids"]) == same
    # searched as a server would, 7 queries per call: the same answers
    assert main(["index", "search", "--index", str(idx), "--queries", str(tmp_path / "Q.npy"), "--top-k", "3",
                 "--out", str(tmp_path / "B.npz"), "--nprobe", "8", "--batch", "7"]) == 0  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "B.npz")["class_ids"], r["class_ids"])


def test_build_with_no_options_takes_the_fast_default(tmp_path, capsys):
    """1,200 prototypes of 16-d, no options: native residual 4-bit PQ with spill 1 (FAISS flat without a compiler)."""
    from megaclass.python_backend.index.defaults import native_available
    from megaclass.python_backend.index.routed_index import RoutedIndex

    _write_files(tmp_path, rows=1200, num_labels=1200, queries=30, seed=2)
    assert main(["index", "build", "--prototypes", str(tmp_path / "P.npy"), "--labels", str(tmp_path / "L.txt"),
                 "--out", str(tmp_path / "ix")]) == 0  # fmt: skip
    cfg = RoutedIndex.load(tmp_path / "ix").cfg
    expected = ("faiss", "flat", 0) if native_available() else ("native", "pq", 1)
    assert (cfg.backend, cfg.storage, cfg.spill) == expected
    assert main(["index", "search", "--index", str(tmp_path / "ix"), "--queries", str(tmp_path / "Q.npy"),
                 "--top-k", "1", "--nprobe", "64", "--out", str(tmp_path / "R.npz")]) == 0  # fmt: skip
    assert list(np.load(tmp_path / "R.npz")["labels"][:, 0]) == [f"class-{i}" for i in range(30)]


def test_build_refuses_mismatched_labels(tmp_path, capsys):
    np.save(tmp_path / "P.npy", np.eye(4, dtype=np.float32))
    (tmp_path / "L.txt").write_text("a\nb\n")
    assert main(["index", "build", "--prototypes", str(tmp_path / "P.npy"), "--labels", str(tmp_path / "L.txt"),
                 "--out", str(tmp_path / "ix")]) == 1  # fmt: skip
    assert "megaclass index build:" in capsys.readouterr().err


def test_build_a_native_residual_pq_index_from_files(tmp_path, capsys):
    _write_files(tmp_path, rows=400, num_labels=400, queries=20, seed=1)
    idx = tmp_path / "ix"
    assert main(["index", "build", "--prototypes", str(tmp_path / "P.npy"), "--labels", str(tmp_path / "L.txt"),
                 "--out", str(idx), "--nlist", "8", "--storage", "pq", "--pq-m", "8", "--pq-residual",
                 "--backend", "native"]) == 0  # fmt: skip
    from megaclass.python_backend.index.routed_index import RoutedIndex

    index = RoutedIndex.load(idx)
    assert (index.cfg.backend, index.cfg.storage, index.cfg.pq_m, index.cfg.pq_residual) == ("native", "pq", 8, True)
    out = tmp_path / "R.npz"
    assert main(["index", "search", "--index", str(idx), "--queries", str(tmp_path / "Q.npy"), "--top-k", "1",
                 "--out", str(out), "--nprobe", "8"]) == 0  # fmt: skip
    assert list(np.load(out)["labels"][:, 0]) == [f"class-{i}" for i in range(20)]


def test_build_routed_by_taxonomy_records_it(tmp_path, capsys):
    rng = np.random.default_rng(4)
    parents = rng.normal(size=(3, 16))
    protos = parents[np.repeat(np.arange(3), 20)] + 0.3 * rng.normal(size=(60, 16))
    protos = (protos / np.linalg.norm(protos, axis=1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "P.npy", protos)
    (tmp_path / "L.txt").write_text("".join(f"item-{i}\n" for i in range(60)))
    # branch b holds item-(20b)..item-(20b+19) under family-b / group-(b // 2); item-59 has no node
    (tmp_path / "tax.csv").write_text(
        "class,parent\n" + "".join(f"item-{i},family-{i // 20}\n" for i in range(59))
        + "".join(f"family-{b},group-{b // 2}\n" for b in range(3))
    )  # fmt: skip
    base = ["index", "build", "--prototypes", str(tmp_path / "P.npy"), "--labels", str(tmp_path / "L.txt"),
            "--storage", "flat", "--backend", "faiss"]  # fmt: skip
    tax = ["--taxonomy", str(tmp_path / "tax.csv")]
    assert main([*base, *tax, "--out", str(tmp_path / "ix2"), "--taxonomy-level", "2"]) == 0
    assert "60 classes, 60 prototypes, 3 clusters" in capsys.readouterr().out
    assert main([*base, *tax, "--out", str(tmp_path / "ix1")]) == 0  # level 1: group-0 (families 0, 1), group-1
    printed = capsys.readouterr().out
    assert "2 clusters" in printed and "level 1: 1 classes without a node" in printed
    manifest = json.loads((tmp_path / "ix1" / "manifest.json").read_text())
    assert manifest["routing"] == {"source": "taxonomy", "taxonomy": str(tmp_path / "tax.csv"), "level": 1,
                                   "groups": 2, "classes_without_node": 1}  # fmt: skip
    assert manifest["router"]["source"] == "groups" and manifest["params"]["taxonomy_level"] == 1
    assert main([*base, "--out", str(tmp_path / "ix0")]) == 0  # no --taxonomy: k-means
    assert json.loads((tmp_path / "ix0" / "manifest.json").read_text())["routing"] == {"source": "kmeans"}
    (tmp_path / "bad.csv").write_text("a,b,c\n")
    assert main([*base, "--taxonomy", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "ix3")]) == 1
    assert "bad.csv:1: expected 'class,parent'" in capsys.readouterr().err
