"""The routed index's public API: exactness, class aggregation, threshold, save/load, integrity, input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.defaults import FAISS_FLAT
from megaclass.python_backend.index.persistence import IndexIntegrityError
from megaclass.python_backend.index.result import SearchResult
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.scan import exact_scores

from .conftest import unit_rows


def _clustered(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, d))
    return unit_rows(x)


def _brute_force(xb: np.ndarray, row_class: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Loop reference: every class's best score, top k classes."""
    out_c, out_s = [], []
    for q in xq:
        s = xb @ q
        best: dict[int, float] = {}
        for c, v in zip(row_class.tolist(), s.tolist(), strict=True):
            best[c] = max(best.get(c, -np.inf), v)
        top = sorted(best.items(), key=lambda t: (-t[1], t[0]))[:k]
        top += [(-1, -np.inf)] * (k - len(top))
        out_c.append([c for c, _ in top])
        out_s.append([v for _, v in top])
    return np.array(out_c), np.array(out_s, dtype=np.float32)


@pytest.fixture(scope="module")
def data() -> dict:
    xb = _clustered(3000, 32, 20, seed=0)
    rng = np.random.default_rng(1)
    row_class = rng.integers(0, 1200, len(xb)).astype(np.int64)  # ~2.5 prototypes per class
    labels = {int(c): f"class-{c}" for c in np.unique(row_class)}
    xq = _clustered(50, 32, 20, seed=0)
    cfg = IndexConfig(nlist=24, nprobe=4, seed=0, **FAISS_FLAT)
    index = RoutedIndex.build(xb, row_class, labels, cfg)
    return {"xb": xb, "row_class": row_class, "labels": labels, "xq": xq, "index": index, "cfg": cfg}


def test_exact_when_all_clusters_probed(data: dict) -> None:
    index: RoutedIndex = data["index"]
    res = index.search(data["xq"], top_k=10, nprobe=index.nlist)
    ref_c, ref_s = _brute_force(data["xb"], data["row_class"], data["xq"], 10)
    np.testing.assert_allclose(res.scores, ref_s, atol=1e-5)
    # class ids agree except where two classes tie on score
    mismatch = res.class_ids != ref_c
    assert not mismatch.any() or np.allclose(res.scores[mismatch], ref_s[mismatch], atol=1e-5)
    assert isinstance(res, SearchResult)
    assert res.class_ids.dtype == np.int64 and res.scores.dtype == np.float32 and res.labels.dtype == object
    assert (res.labels == index.label_of(res.class_ids)).all()
    assert res.labels[0, 0] == f"class-{res.class_ids[0, 0]}"


def test_recall_never_falls_as_nprobe_grows(data: dict) -> None:
    index: RoutedIndex = data["index"]
    ref_c, _ = _brute_force(data["xb"], data["row_class"], data["xq"], 10)
    recalls = []
    for nprobe in (1, 2, 4, 8, 16, index.nlist):
        got = index.search(data["xq"], top_k=10, nprobe=nprobe).class_ids
        recalls.append(np.mean([len(set(g) & set(r)) / 10 for g, r in zip(got, ref_c, strict=True)]))
    assert all(b >= a - 1e-9 for a, b in zip(recalls, recalls[1:], strict=False))
    assert recalls[-1] == 1.0


def test_class_aggregation_counts_a_class_once_at_its_best_score() -> None:
    d = 8
    rng = np.random.default_rng(0)
    q = unit_rows(rng.standard_normal((1, d)))
    # class 7 has three prototypes close to the query, class 3 one slightly further, class 5 far away
    near = unit_rows(q + 0.05 * rng.standard_normal((3, d)))
    mid = unit_rows(q + 0.5 * rng.standard_normal((1, d)))
    far = unit_rows(-q + 0.1 * rng.standard_normal((1, d)))
    xb = np.vstack([near, mid, far])
    ids = np.array([7, 7, 7, 3, 5])
    index = RoutedIndex.build(xb, ids, {7: "seven", 3: "three", 5: "five"}, IndexConfig(nlist=1))
    res = index.search(q, top_k=4)
    assert res.class_ids[0].tolist() == [7, 3, 5, -1]
    assert res.scores[0, 0] == pytest.approx(float((near @ q[0]).max()), abs=1e-6)
    assert res.labels[0].tolist() == ["seven", "three", "five", ""]
    assert res.scores[0, 3] == -np.inf


def test_threshold_marks_weak_answers_unknown(data: dict) -> None:
    index: RoutedIndex = data["index"]
    plain = index.search(data["xq"], top_k=5)
    t = float(np.median(plain.scores[:, 0]))
    res = index.search(data["xq"], top_k=5, threshold=t)
    below = plain.scores < t
    assert below.any() and (~below).any()
    assert (res.class_ids[below] == -1).all() and (res.labels[below] == "<unknown>").all()
    assert (res.class_ids[~below] == plain.class_ids[~below]).all()
    np.testing.assert_array_equal(res.scores, plain.scores)  # scores are kept
    # the configured threshold applies when none is passed
    cfg_index = RoutedIndex.build(
        data["xb"], data["row_class"], data["labels"], IndexConfig(nlist=24, nprobe=4, score_threshold=t, **FAISS_FLAT)
    )
    assert (cfg_index.search(data["xq"], top_k=5).class_ids[below] == -1).all()


def test_save_load_round_trip(data: dict, tmp_path: Path) -> None:
    index: RoutedIndex = data["index"]
    out = tmp_path / "v1"
    index.save(out, extra_manifest={"encoder_sha256": "abc123"})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dim"] == 32 and manifest["metric"] == "inner_product"
    assert manifest["num_classes"] == index.num_classes and manifest["num_prototypes"] == 3000
    assert manifest["encoder_sha256"] == "abc123" and manifest["params"]["nlist"] == 24
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    loaded = RoutedIndex.load(out)
    assert (loaded.dim, loaded.num_classes, loaded.num_prototypes) == (32, index.num_classes, 3000)
    a = index.search(data["xq"], top_k=7, nprobe=3)
    b = loaded.search(data["xq"], top_k=7, nprobe=3)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert loaded.manifest["encoder_sha256"] == "abc123"
    with pytest.raises(FileExistsError):
        index.save(out)


def _saved(data: dict, tmp_path: Path) -> Path:
    out = tmp_path / "idx"
    data["index"].save(out)
    return out


def test_corrupted_file_refused(data: dict, tmp_path: Path) -> None:
    out = _saved(data, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    victim = max(manifest["files"], key=lambda n: manifest["files"][n]["bytes"])
    raw = bytearray((out / victim).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (out / victim).write_bytes(bytes(raw))
    with pytest.raises(IndexIntegrityError, match=victim):
        RoutedIndex.load(out)


def test_truncated_or_missing_file_refused(data: dict, tmp_path: Path) -> None:
    out = _saved(data, tmp_path)
    raw = (out / "classes.npy").read_bytes()
    (out / "classes.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexIntegrityError, match="classes.npy"):
        RoutedIndex.load(out)
    (out / "classes.npy").unlink()
    with pytest.raises(IndexIntegrityError, match="classes.npy.*missing"):
        RoutedIndex.load(out)


def test_bad_manifest_refused(data: dict, tmp_path: Path) -> None:
    out = _saved(data, tmp_path)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(IndexIntegrityError, match="manifest"):
        RoutedIndex.load(out)
    (out / "manifest.json").unlink()
    with pytest.raises(IndexIntegrityError, match="manifest missing"):
        RoutedIndex.load(out)
    with pytest.raises(IndexIntegrityError):
        RoutedIndex.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        (np.zeros(32, np.float32), "2-D"),
        (np.zeros((2, 31), np.float32), "dimension 31"),
        (np.array([[np.nan] * 32]), "NaN"),
        (np.full((1, 32), np.inf), "NaN or infinity"),
        (np.array([["a"] * 32]), "numeric"),
        ([[1.0, 2.0], [3.0]], "not an array|2-D"),
    ],
)
def test_bad_queries_raise_value_error(data: dict, queries: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data["index"].search(queries, top_k=3)


def test_bad_arguments(data: dict) -> None:
    index: RoutedIndex = data["index"]
    with pytest.raises(ValueError, match="top_k"):
        index.search(data["xq"], top_k=0)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(data["xq"], top_k=3, nprobe=0)
    res = index.search(data["xq"][:0], top_k=3)
    assert res.class_ids.shape == (0, 3)
    with pytest.raises(ValueError, match="label"):
        RoutedIndex.build(data["xb"], data["row_class"], {}, IndexConfig(nlist=4))


def test_concurrent_searches_agree(data: dict) -> None:
    from concurrent.futures import ThreadPoolExecutor

    index: RoutedIndex = data["index"]
    ref = index.search(data["xq"], top_k=5).class_ids
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: index.search(data["xq"], top_k=5).class_ids, range(16)))
    assert all((r == ref).all() for r in results)


def test_rerank_scores_are_exact_inner_products_and_minus_inf_for_missing_rows(data: dict) -> None:
    index: RoutedIndex = data["index"]
    xq = np.ascontiguousarray(data["xq"][:6])
    rows = np.random.default_rng(5).integers(-1, len(data["xb"]), (6, 9))
    rows[0, :3] = -1
    got = exact_scores(index._vectors, xq, rows)
    want = np.einsum("qmd,qd->qm", index._vectors[np.maximum(rows, 0)], xq)
    np.testing.assert_allclose(got[rows >= 0], want[rows >= 0], rtol=1e-5, atol=1e-6)
    assert (got[rows < 0] == -np.inf).all() and got.dtype == np.float32


def _tree(seed: int = 7, branches: int = 6, children: int = 40, dim: int = 32):
    """A two-level hierarchy in embedding space: each class a child direction around its branch's direction."""
    rng = np.random.default_rng(seed)
    parents = unit_rows(rng.standard_normal((branches, dim)))
    branch = np.repeat(np.arange(branches), children)
    protos = unit_rows(parents[branch] + 0.25 * rng.standard_normal((len(branch), dim)))
    queries = unit_rows(protos[::3] + 0.15 * rng.standard_normal((len(protos[::3]), dim)))
    return protos, branch, queries


@pytest.mark.parametrize("storage", ["flat", "pq"])
def test_routing_by_groups_keeps_each_branch_in_one_cluster(tmp_path: Path, storage: str) -> None:
    protos, branch, queries = _tree()
    ids = np.arange(len(protos)) + 1000
    cfg = IndexConfig(storage=storage, backend="faiss" if storage == "flat" else "auto", nprobe=2, nlist=50)
    index = RoutedIndex.build(protos, ids, {int(c): f"c{c}" for c in ids}, cfg, groups=branch)
    assert index.nlist == 6 and index.cfg.nlist == 6  # one cluster per branch; nlist=50 does not apply
    rows, first = np.unique(index._entry_row, return_index=True)
    primary = index._entry_list[first]
    assert all(len(np.unique(primary[branch[rows] == b])) == 1 for b in range(6))
    assert index.manifest["router"]["source"] == "groups"
    want = index.exact_search(queries, top_k=10).class_ids
    for nprobe, least in ((2, 0.85), (6, 1.0 if storage == "flat" else 0.97)):  # 6: every branch probed
        got = index.search(queries, top_k=10, nprobe=nprobe).class_ids
        assert np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)]) >= least
    index.save(tmp_path / "ix")
    loaded = RoutedIndex.load(tmp_path / "ix")
    assert loaded.manifest["router"]["source"] == "groups"
    assert np.array_equal(loaded.search(queries, top_k=10, nprobe=6).class_ids, got)
    kmeans = RoutedIndex.build(protos, ids, {int(c): f"c{c}" for c in ids}, cfg)
    assert kmeans.manifest["router"]["source"] == "kmeans" and kmeans.nlist == 50


def test_rebuild_router_keeps_the_groups() -> None:
    protos, branch, _ = _tree(seed=8)
    ids = np.arange(len(protos))
    labels = {int(c): str(c) for c in ids}
    index = RoutedIndex.build(protos, ids, labels, IndexConfig(storage="flat", backend="faiss"), groups=branch)
    index.remove(ids[branch == 2])  # a whole branch gone: its cluster is dropped at rebuild
    index.rebuild_router()
    assert index.nlist == 5 and index.manifest["router"]["source"] == "groups"
    rows, first = np.unique(index._entry_row, return_index=True)
    live_branch = branch[index._row_class[rows]]
    primary = index._entry_list[first]
    assert all(len(np.unique(primary[live_branch == b])) == 1 for b in (0, 1, 3, 4, 5))
    assert len(np.unique(primary)) == 5
