"""The real Triton server: classify and retriever over gRPC and HTTP, checked in-process."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from megaclass.clients.client import Client, MegaclassError
from megaclass.export.repository.generate import is_one_hop
from megaclass.python_backend.serving.preprocess import to_model_input

pytestmark = pytest.mark.integration
PROTOCOLS = ["grpc", "http"]


def _client(stack, protocol: str) -> Client:
    url = stack.server.grpc_url if protocol == "grpc" else stack.server.http_url
    return Client(url, protocol)


def _in_process(stack, images: np.ndarray, top_k: int):
    return stack.index.search(stack.encoder.embed(to_model_input(images)), top_k=top_k)


def assert_same_answers(got, want, atol: float = 1e-4) -> None:
    """Same scores; same classes except where two scores tie within atol."""
    np.testing.assert_allclose(got.scores, want.scores, atol=atol)
    differs = got.class_ids != want.class_ids
    assert not differs.any() or np.all(np.abs(np.diff(want.scores, axis=1)).min() < atol), (
        got.class_ids,
        want.class_ids,
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_matches_in_process(tiny_stack, protocol):
    images = tiny_stack.images[:50]  # more than max_batch_size: the client splits it
    with _client(tiny_stack, protocol) as client:
        got = client.classify(images)
    want = _in_process(tiny_stack, images, top_k=5)
    assert got.class_ids.shape == (50, 5)
    assert_same_answers(got, want)
    np.testing.assert_array_equal(got.labels, want.labels)
    # the patterns are learnable even by an untrained encoder: far above chance (1/40)
    assert np.mean(got.class_ids[:, 0] == tiny_stack.class_ids[:50]) > 0.5
    assert all(v.startswith("1:") for v in got.index_versions)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retriever_direct_with_options(tiny_stack, protocol):
    emb = tiny_stack.encoder.embed(to_model_input(tiny_stack.images[:20]))
    with _client(tiny_stack, protocol) as client:
        got = client.search(emb, top_k=3)
        assert got.class_ids.shape == (20, 3)
        assert_same_answers(got, tiny_stack.index.search(emb, top_k=3))
        strict = client.search(emb, top_k=3, threshold=0.999999)
    below = got.scores < 0.999999
    assert (strict.class_ids[below] == -1).all() and (strict.labels[below] == "<unknown>").all()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["retriever", "classify"])
@pytest.mark.parametrize("subset", [["CLASS_IDS"], ["SCORES", "LABELS"], ["INDEX_VERSION"]])
def test_requested_output_subsets(tiny_stack, protocol, model, subset):
    """Only the outputs the caller asked for come back, and they equal the full answer's."""
    tc = grpcclient if protocol == "grpc" else httpclient
    url = tiny_stack.server.grpc_url if protocol == "grpc" else tiny_stack.server.http_url
    if model == "retriever":
        data, name = tiny_stack.encoder.embed(to_model_input(tiny_stack.images[:3])), "EMBEDDING"
    else:
        data, name = to_model_input(tiny_stack.images[:3]), "IMAGE"
    client = tc.InferenceServerClient(url)
    x = tc.InferInput(name, list(data.shape), "FP32")
    x.set_data_from_numpy(data)
    full = client.infer(model, [x])
    part = client.infer(model, [x], outputs=[tc.InferRequestedOutput(n) for n in subset])
    got = {o["name"] for o in part.get_response(as_json=True)["outputs"]} if protocol == "grpc" else {
        o["name"] for o in part.get_response()["outputs"]}  # fmt: skip
    assert got == set(subset)
    for n in subset:
        np.testing.assert_array_equal(part.as_numpy(n), full.as_numpy(n))


def test_top_k_from_request_parameters(tiny_stack):
    emb = tiny_stack.encoder.embed(to_model_input(tiny_stack.images[:4]))
    client = grpcclient.InferenceServerClient(tiny_stack.server.grpc_url)
    x = grpcclient.InferInput("EMBEDDING", list(emb.shape), "FP32")
    x.set_data_from_numpy(emb)
    res = client.infer("retriever", [x], parameters={"top_k": 2})
    assert res.as_numpy("CLASS_IDS").shape == (4, 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("top_k", [0, -3, 10_000])
def test_bad_top_k_is_a_clear_error(tiny_stack, protocol, top_k):
    emb = tiny_stack.encoder.embed(to_model_input(tiny_stack.images[:2]))
    with _client(tiny_stack, protocol) as client, pytest.raises(MegaclassError, match="top_k must be between 1 and"):
        client.search(emb, top_k=top_k)


def _raw_infer(stack, protocol: str, model: str, name: str, array: np.ndarray, dtype: str):
    mod = grpcclient if protocol == "grpc" else httpclient
    url = stack.server.grpc_url if protocol == "grpc" else stack.server.http_url
    client = mod.InferenceServerClient(url)
    x = mod.InferInput(name, list(array.shape), dtype)
    x.set_data_from_numpy(array)
    return client.infer(model, [x])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_input_fails_alone_while_good_requests_succeed(tiny_stack, protocol):
    """Wrong dims and NaN get their own error; concurrent good requests are all answered."""
    good = tiny_stack.images[:8]
    want = _in_process(tiny_stack, good, top_k=5)
    nan_emb = np.full((2, 16), np.nan, dtype=np.float32)

    def good_call(_):
        with _client(tiny_stack, protocol) as c:
            return c.classify(good)

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(good_call, i) for i in range(16)]
        with pytest.raises(InferenceServerException, match="NaN or Inf"):
            _raw_infer(tiny_stack, protocol, "retriever", "EMBEDDING", nan_emb, "FP32")
        with pytest.raises(InferenceServerException, match=r"unexpected shape|shape"):
            _raw_infer(tiny_stack, protocol, "retriever", "EMBEDDING", np.zeros((2, 7), np.float32), "FP32")
        with pytest.raises(InferenceServerException, match=r"data-type|datatype|dtype|FP64|expected"):
            _raw_infer(tiny_stack, protocol, "classify", "IMAGE", np.zeros((1, 1, 16, 16), np.float64), "FP64")
        for f in futures:
            assert_same_answers(f.result(), want)


def test_dynamic_batching_merges_concurrent_requests(tiny_stack):
    """Concurrent single-image requests reach the models as batches larger than one."""
    client = grpcclient.InferenceServerClient(tiny_stack.server.grpc_url)
    model = "classify" if is_one_hop(tiny_stack.repo) else "encoder"  # the model that runs the encoder

    def batch_sizes() -> dict[int, int]:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}

    before = batch_sizes()
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: _client(tiny_stack, "grpc").classify(tiny_stack.images[i : i + 1]), range(64)))
    after = batch_sizes()
    grew = {b: after.get(b, 0) - before.get(b, 0) for b in after}
    assert sum(b * n for b, n in grew.items()) >= 64
    assert any(b > 1 and n > 0 for b, n in grew.items()), grew


def test_metrics_endpoint_reports_requests(tiny_stack):
    import urllib.request

    text = urllib.request.urlopen(tiny_stack.server.metrics_url, timeout=5).read().decode()
    assert 'nv_inference_request_success{model="classify"' in text


def test_cli_classify_image_files(tiny_stack, tmp_path, capsys):
    from PIL import Image

    from megaclass.clients.cli.main import main

    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(tiny_stack.images[i]).save(p)
        paths.append(str(p))
    assert main(["classify", *paths, "--url", tiny_stack.server.grpc_url, "--top-k", "2", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    want = _in_process(tiny_stack, tiny_stack.images[:3], top_k=2)
    assert [[p["class_id"] for p in r["predictions"]] for r in rows] == want.class_ids.tolist()


def test_cli_classify_unreachable_server_is_a_clear_error(tmp_path, capsys):
    from megaclass.clients.cli.main import main
    from megaclass.python_backend.server.triton_server import free_port

    p = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(p)
    assert main(["classify", str(p), "--url", f"127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert "megaclass classify:" in capsys.readouterr().err


def test_perf_analyzer_sweep_runs(tiny_stack):
    from megaclass.loadtest.perf import run_perf

    points = run_perf(
        "classify",
        tiny_stack.server.grpc_url,
        concurrency=[1, 4],
        shapes={"IMAGE": [1, 16, 16]},
        measurement_ms=800,
        stability_percent=100,
        max_trials=5,
    )
    assert [p.concurrency for p in points] == [1, 4]
    assert all(p.throughput > 0 and p.p99_us >= p.p50_us > 0 for p in points)


def test_retriever_custom_metrics(tiny_stack):
    import time
    import urllib.request

    emb = tiny_stack.encoder.embed(to_model_input(tiny_stack.images[:3]))
    time.sleep(0.6)  # sums are sent at most every 0.5 s (SearchTally): a request after a pause sends at once
    with _client(tiny_stack, "grpc") as client:
        client.search(emb)
    text = urllib.request.urlopen(tiny_stack.server.metrics_url, timeout=5).read().decode()
    queries = [ln for ln in text.splitlines() if ln.startswith("megaclass_retriever_queries_total")]
    assert queries and float(queries[0].split()[-1]) >= 3
    assert "megaclass_retriever_nprobe" in text and "megaclass_retriever_index_info" in text
    compute = [ln for ln in text.splitlines() if ln.startswith("megaclass_compute_seconds_total")]
    assert compute and float(compute[0].split()[-1]) > 0  # the searches' CPU time
