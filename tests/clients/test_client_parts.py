"""The client's pieces without a server: errors and retries, inputs, shared memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from megaclass.clients.client import (
    SearchResults,
    image_batch,
    search_inputs,
    split_rows,
)
from megaclass.clients.errors import (
    INVALID,
    SERVER,
    TIMEOUT,
    UNAVAILABLE,
    MegaclassError,
    RetryPolicy,
    to_megaclass_error,
)
from megaclass.clients.shared_memory import SHM_DIR, SharedMemoryRegion, SlotLayout


def test_retry_delays_grow_exponentially_within_jitter_and_cap():
    policy = RetryPolicy(retries=6, backoff_s=0.1, max_backoff_s=1.0, jitter=0.2)
    delays = list(policy.delays())
    assert len(delays) == 6
    for i, d in enumerate(delays):
        base = min(0.1 * 2**i, 1.0)
        assert 0.8 * base <= d <= 1.2 * base
    assert list(RetryPolicy(retries=0).delays()) == []


@pytest.mark.parametrize("bad", [{"retries": -1}, {"backoff_s": -0.1}, {"jitter": 1.0}])
def test_retry_policy_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE"), UNAVAILABLE),
        (InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"), UNAVAILABLE),
        (InferenceServerException("Exceeds maximum queue size", status="503"), UNAVAILABLE),
        (InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), TIMEOUT),
        (InferenceServerException("top_k must be between 1 and 5", status="StatusCode.INVALID_ARGUMENT"), INVALID),
        (InferenceServerException("unexpected shape for input", status="400"), INVALID),
        (InferenceServerException("model crashed", status="StatusCode.INTERNAL"), SERVER),
        (
            InferenceServerException("Stub process 'retriever_0_0' is not healthy.", status="StatusCode.INTERNAL"),
            UNAVAILABLE,
        ),
        (ConnectionRefusedError(111, "Connection refused"), UNAVAILABLE),
        (TimeoutError("timed out"), TIMEOUT),
        (TimeoutError(), TIMEOUT),
        (KeyError("x"), SERVER),
    ],
)
def test_errors_are_classified(exc, status):
    err = to_megaclass_error(exc, "host:1")
    assert isinstance(err, MegaclassError) and err.status == status
    if isinstance(exc, InferenceServerException):
        assert exc.message() in str(err)  # the server's message is kept


def test_gevent_timeout_is_a_timeout():
    from gevent import Timeout

    assert to_megaclass_error(Timeout(1), "h:1").status == TIMEOUT


def test_only_unavailable_is_retried_by_default():
    policy = RetryPolicy()
    assert policy.should_retry(MegaclassError("x", UNAVAILABLE))
    assert not policy.should_retry(MegaclassError("x", TIMEOUT))
    assert not policy.should_retry(MegaclassError("x", INVALID))
    assert RetryPolicy(retry_timeouts=True).should_retry(MegaclassError("x", TIMEOUT))


def test_image_batch_accepts_arrays_pil_and_paths(tmp_path: Path):
    rng = np.random.default_rng(0)
    imgs = (rng.random((3, 8, 8)) * 100).astype(np.uint8)  # dark background: not inverted on load
    want = imgs.astype(np.float32)[:, None] / 255
    np.testing.assert_allclose(image_batch(imgs, [1, 8, 8]), want)
    np.testing.assert_allclose(image_batch(imgs[0], [1, 8, 8]), want[:1])  # one [S, S] image
    np.testing.assert_allclose(image_batch(want, [1, 8, 8]), want)  # already model input
    paths = []
    for i, img in enumerate(imgs):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    np.testing.assert_allclose(image_batch(paths, [1, 8, 8]), want)
    np.testing.assert_allclose(image_batch([str(p) for p in paths], [1, 8, 8]), want)
    np.testing.assert_allclose(image_batch([Image.fromarray(i) for i in imgs], [1, 8, 8]), want)
    np.testing.assert_allclose(image_batch(paths[0], [1, 8, 8]), want[:1])
    big = Image.fromarray(np.zeros((32, 32), np.uint8))
    assert image_batch([big], [1, 8, 8]).shape == (1, 1, 8, 8)  # resized on load


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 9, 9), np.uint8), np.zeros((2, 2, 8, 8), np.float32), np.zeros((0, 8, 8), np.uint8), []]
)
def test_image_batch_rejects_wrong_shapes(bad):
    with pytest.raises(MegaclassError) as info:
        image_batch(bad, [1, 8, 8])
    assert info.value.status == INVALID


def test_search_inputs_and_split_rows():
    inputs = search_inputs(np.ones((5, 4), np.float64), 4, top_k=3, threshold=0.5)
    assert inputs["EMBEDDING"].dtype == np.float32 and inputs["TOP_K"].tolist() == [[3]] * 5
    assert inputs["THRESHOLD"].dtype == np.float32
    assert search_inputs(np.ones(4), 4, None, None)["EMBEDDING"].shape == (1, 4)
    with pytest.raises(MegaclassError, match=r"\[N, 4\]"):
        search_inputs(np.ones((2, 3)), 4, None, None)
    chunks = split_rows(inputs, 2)
    assert [len(c["EMBEDDING"]) for c in chunks] == [2, 2, 1]
    assert [len(c["TOP_K"]) for c in chunks] == [2, 2, 1]


def test_search_results_concat_and_truncate():
    a = SearchResults(np.ones((2, 3), np.int64), np.full((2, 3), "a", object), np.ones((2, 3), np.float32), ["v"] * 2)
    b = SearchResults(np.zeros((1, 3), np.int64), np.full((1, 3), "b", object), np.zeros((1, 3), np.float32), ["v"])
    c = SearchResults.concat([a, b]).truncated(2)
    assert c.class_ids.shape == (3, 2) and len(c) == 3 and c.index_versions == ["v"] * 3
    assert c.predictions(2)[0].label == "b"


def test_slot_layout_aligns_parts():
    layout = SlotLayout({"input": 100, "CLASS_IDS": 8, "SCORES": 4}, align=64)
    assert layout.offsets == {"input": 0, "CLASS_IDS": 128, "SCORES": 192}
    assert layout.slot_bytes == 256


def test_shared_memory_region_round_trip_and_cleanup():
    region = SharedMemoryRegion(1024)
    path = SHM_DIR / region.name
    assert path.exists() and region.key == "/" + region.name
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert region.write(64, arr) == 48
    np.testing.assert_array_equal(region.read(64, np.float32, (3, 4)), arr)
    with pytest.raises(ValueError, match="do not fit"):
        region.write(1000, arr)
    region.close()
    assert not path.exists()
    region.close()  # idempotent
