"""Bad input over gRPC and HTTP against the real server: each bad request gets its own clear
error (a client error: INVALID_ARGUMENT / 400, or NOT_FOUND / 404) while good requests running
at the same time all succeed with the right answers.

tests/integration/test_serving.py already covers NaN embeddings, a 7-wide embedding, an FP64
image and TOP_K of 0, -3 and 10000 through the client; the cases here are the rest.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from .conftest import EMBEDDING_DIM, IMAGE_SIZE, MAX_BATCH, png_bytes, raw_infer

pytestmark = pytest.mark.integration
PROTOCOLS = ["grpc", "http"]
INVALID, NOT_FOUND = "invalid", "not_found"
STATUS = {
    ("grpc", INVALID): "StatusCode.INVALID_ARGUMENT",
    ("grpc", NOT_FOUND): "StatusCode.NOT_FOUND",
    ("http", INVALID): "400",
    ("http", NOT_FOUND): "404",
}


def emb(n: int = 2, dtype=np.float32) -> np.ndarray:
    x = np.random.default_rng(n).standard_normal((n, EMBEDDING_DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def img(n: int = 2, dtype=np.float32, size: int = IMAGE_SIZE) -> np.ndarray:
    return np.random.default_rng(n).random((n, 1, size, size)).astype(dtype)


def with_value(array: np.ndarray, index: tuple, value: float) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def opts(name: str, values, dtype: str) -> tuple[str, np.ndarray, str]:
    np_dtype = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64}[dtype]
    return (name, np.asarray(values, dtype=np_dtype), dtype)


@dataclass(frozen=True)
class Case:
    model: str
    inputs: Callable[[], list]
    match: str  # regex the error message must match
    kind: str = INVALID
    parameters: dict | None = None
    version: str = ""


E, IM = "EMBEDDING", "IMAGE"
CASES: dict[str, Case] = {
    # wrong dtype
    "embedding-int32": Case("retriever", lambda: [(E, emb(dtype=np.int32), "INT32")], r"'EMBEDDING' data-type is 'INT32', but model 'retriever' expects 'FP32'"),
    "embedding-fp16": Case("retriever", lambda: [(E, emb(dtype=np.float16), "FP16")], r"data-type is 'FP16', but model 'retriever' expects 'FP32'"),
    "image-fp16": Case("classify", lambda: [(IM, img(dtype=np.float16), "FP16")], r"'IMAGE' data-type is 'FP16', but model 'classify' expects 'FP32'"),
    "image-bytes": Case("classify", lambda: [(IM, np.array([[b"\x89PNG"]], dtype=object), "BYTES")], r"'IMAGE' data-type is 'BYTES'"),
    "top_k-int64": Case("retriever", lambda: [(E, emb(), "FP32"), opts("TOP_K", [[3], [3]], "INT64")], r"'TOP_K' data-type is 'INT64', but model 'retriever' expects 'INT32'"),
    "threshold-fp64": Case("retriever", lambda: [(E, emb(), "FP32"), opts("THRESHOLD", [[0.5], [0.5]], "FP64")], r"'THRESHOLD' data-type is 'FP64'"),
    # wrong shape or dimension
    "embedding-rank3": Case("retriever", lambda: [(E, emb()[None], "FP32")], r"unexpected shape for input 'EMBEDDING'.*Expected \[-1,16\], got \[1,2,16\]"),
    "image-8x8": Case("classify", lambda: [(IM, img(size=8), "FP32")], r"unexpected shape for input 'IMAGE'.*Expected \[-1,1,16,16\], got \[2,1,8,8\]"),
    "image-no-channel": Case("classify", lambda: [(IM, img()[:, 0], "FP32")], r"unexpected shape for input 'IMAGE'.*got \[2,16,16\]"),
    "top_k-two-columns": Case("retriever", lambda: [(E, emb(), "FP32"), opts("TOP_K", [[3, 3], [3, 3]], "INT32")], r"unexpected shape for input 'TOP_K'"),
    "top_k-fewer-rows": Case("retriever", lambda: [(E, emb(), "FP32"), opts("TOP_K", [[3]], "INT32")], r"batch size does not match other inputs"),
    "top_k-rows-disagree": Case("retriever", lambda: [(E, emb(), "FP32"), opts("TOP_K", [[3], [0]], "INT32")], r"TOP_K must have the same value in every row of a request, got 0, 3"),
    "embedding-missing": Case("retriever", lambda: [opts("TOP_K", [[3]], "INT32")], r"retriever: input EMBEDDING is missing"),
    "unknown-input": Case("classify", lambda: [("PIXELS", img(), "FP32")], r"unexpected inference input 'PIXELS' for model 'classify'"),
    # NaN or Inf
    "embedding-inf": Case("retriever", lambda: [(E, np.full((2, EMBEDDING_DIM), np.inf, np.float32), "FP32")], r"retriever: input EMBEDDING contains NaN or Inf values"),
    "embedding-one-neg-inf": Case("retriever", lambda: [(E, with_value(emb(), (1, 3), -np.inf), "FP32")], r"input EMBEDDING contains NaN or Inf values"),
    "image-one-nan-pixel": Case("classify", lambda: [(IM, with_value(img(), (0, 0, 5, 5), np.nan), "FP32")], r"(in ensemble 'classify', encoder|^classify): input IMAGE contains NaN or Inf values"),
    "image-inf": Case("classify", lambda: [(IM, np.full((1, 1, IMAGE_SIZE, IMAGE_SIZE), np.inf, np.float32), "FP32")], r"(encoder|classify): input IMAGE contains NaN or Inf values"),
    # empty batch, over max_batch_size
    "embedding-empty": Case("retriever", lambda: [(E, np.zeros((0, EMBEDDING_DIM), np.float32), "FP32")], r"input byte size mismatch for input 'EMBEDDING'"),
    "image-empty": Case("classify", lambda: [(IM, img(0), "FP32")], r"input byte size mismatch for input 'IMAGE'"),
    "embedding-over-max-batch": Case("retriever", lambda: [(E, emb(MAX_BATCH + 1), "FP32")], rf"batch-size must be <= {MAX_BATCH} for 'retriever'"),
    "image-over-max-batch": Case("classify", lambda: [(IM, img(MAX_BATCH + 1), "FP32")], rf"batch-size must be <= {MAX_BATCH} for 'classify'"),
    # top_k 0, negative, larger than the class count, not an integer (request parameters of the ensemble)
    "classify-top_k-0": Case("classify", lambda: [(IM, img(), "FP32")], r"in ensemble 'classify', retriever: top_k must be between 1 and 20 .* got 0", parameters={"top_k": 0}),
    "classify-top_k-negative": Case("classify", lambda: [(IM, img(), "FP32")], r"top_k must be between 1 and 20 .* got -1", parameters={"top_k": -1}),
    "classify-top_k-too-large": Case("classify", lambda: [(IM, img(), "FP32")], r"top_k must be between 1 and 20 \(the index has 40 classes, the server allows at most 20\), got 41", parameters={"top_k": 41}),
    "classify-top_k-text": Case("classify", lambda: [(IM, img(), "FP32")], r"top_k must be an integer, got 'five'", parameters={"top_k": "five"}),
    "classify-top_k-bool": Case("classify", lambda: [(IM, img(), "FP32")], r"top_k must be an integer, got True", parameters={"top_k": True}),
    "classify-top_k-float": Case("classify", lambda: [(IM, img(), "FP32")], r"top_k must be an integer, got 2.5", parameters={"top_k": 2.5}),
    "top_k-input-negative": Case("retriever", lambda: [(E, emb(), "FP32"), opts("TOP_K", [[-7], [-7]], "INT32")], r"top_k must be between 1 and 20 .* got -7"),
    # threshold out of range
    "threshold-above-1": Case("retriever", lambda: [(E, emb(), "FP32"), opts("THRESHOLD", [[1.5], [1.5]], "FP32")], r"threshold is a cosine similarity and must be a number in \[-1, 1\], got 1.5"),
    "threshold-below-minus-1": Case("retriever", lambda: [(E, emb(), "FP32"), opts("THRESHOLD", [[-1.5], [-1.5]], "FP32")], r"must be a number in \[-1, 1\], got -1.5"),
    "threshold-nan": Case("retriever", lambda: [(E, emb(), "FP32"), opts("THRESHOLD", [[np.nan], [np.nan]], "FP32")], r"must be a number in \[-1, 1\], got nan"),
    "threshold-inf": Case("retriever", lambda: [(E, emb(), "FP32"), opts("THRESHOLD", [[np.inf], [np.inf]], "FP32")], r"must be a number in \[-1, 1\], got inf"),
    "classify-threshold-param": Case("classify", lambda: [(IM, img(), "FP32")], r"in ensemble 'classify', retriever: threshold .* got 5", parameters={"threshold": 5}),
    "classify-threshold-text": Case("classify", lambda: [(IM, img(), "FP32")], r"threshold .* got 'high'", parameters={"threshold": "high"}),
    # unknown model or version
    "unknown-model": Case("nope", lambda: [(IM, img(), "FP32")], r"Request for unknown model: 'nope' is not found", NOT_FOUND),
    "unknown-classify-version": Case("classify", lambda: [(IM, img(), "FP32")], r"Request for unknown model: 'classify' version 99 is not found", NOT_FOUND, version="99"),
    "unknown-retriever-version": Case("retriever", lambda: [(E, emb(), "FP32")], r"'retriever' version 7 is not found", NOT_FOUND, version="7"),
}  # fmt: skip


def _expect_error(stack, protocol: str, case: Case) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        raw_infer(stack, protocol, case.model, case.inputs(), case.parameters, case.version)
    return info.value


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_gets_its_own_clear_error(stack, good_traffic, protocol, name):
    case = CASES[name]
    start = time.monotonic()
    err = _expect_error(stack, protocol, case)
    assert str(err.status()) == STATUS[(protocol, case.kind)], (err.status(), err.message())
    assert re.search(case.match, err.message() or ""), err.message()
    good_traffic.assert_healthy(since=start)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_version_strings(stack, protocol):
    """A version that is not a positive integer: gRPC says so; Triton's HTTP router answers 404."""
    case = Case("classify", lambda: [(IM, img(), "FP32")], "", version="abc")
    err = _expect_error(stack, protocol, case)
    if protocol == "grpc":
        assert "version should be an integral value > 0" in err.message()
    else:
        assert str(err.status()) == "404"


# --- bytes that are not an image: the encoded-image entry (decode -> encoder -> retriever) -----------


def _bomb_png(side: int = 5000) -> bytes:
    """A small file that decodes to side*side pixels (a decompression bomb in miniature)."""
    return png_bytes(np.zeros((side, side), np.uint8))


ENCODED = {
    "text": (lambda s: b"hello, I am not a picture", r"IMAGE_BYTES\[0\] is not a PNG or JPEG image \(it starts with b'hello, I'\)"),
    "empty": (lambda s: b"", r"IMAGE_BYTES\[0\] is empty"),
    "truncated-png": (lambda s: png_bytes(s.images[0])[:60], r"IMAGE_BYTES\[0\] is a truncated or damaged PNG file"),
    "truncated-jpeg": (lambda s: png_bytes(s.images[0], "JPEG")[:200], r"IMAGE_BYTES\[0\] is a truncated or damaged JPEG file"),
    "gif": (lambda s: png_bytes(s.images[0], "GIF"), r"is not a PNG or JPEG image \(it starts with b'GIF8"),
    "pixel-bomb": (lambda s: _bomb_png(), r"IMAGE_BYTES\[0\] is 5000x5000 pixels; the limit is 16777216 pixels"),
    "pickle": (lambda s: b"\x80\x04\x95" + b"cos\nsystem\n" * 3, r"is not a PNG or JPEG image"),
}  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", list(ENCODED))
def test_bytes_that_are_not_an_image(stack, good_traffic, protocol, name):
    make, match = ENCODED[name]
    start = time.monotonic()
    data = np.array([[make(stack)]], dtype=object)
    with pytest.raises(InferenceServerException) as info:
        raw_infer(stack, protocol, "classify_encoded", [("IMAGE_BYTES", data, "BYTES")])
    assert str(info.value.status()) == STATUS[(protocol, INVALID)], info.value.message()
    assert "in ensemble 'classify_encoded', decode:" in info.value.message()
    assert re.search(match, info.value.message()), info.value.message()
    good_traffic.assert_healthy(since=start)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_encoded_images_classify_like_pixels(stack, protocol):
    """PNG and JPEG bytes through classify_encoded answer like the same pixels through classify;
    one bad row fails only its own request."""
    images = stack.images[:3]
    pixels = raw_infer(stack, protocol, "classify", [("IMAGE", _as_glyph_input(images), "FP32")])
    encoded = np.array([[png_bytes(im)] for im in images], dtype=object)
    got = raw_infer(stack, protocol, "classify_encoded", [("IMAGE_BYTES", encoded, "BYTES")])
    np.testing.assert_array_equal(got.as_numpy("CLASS_IDS"), pixels.as_numpy("CLASS_IDS"))
    jpeg = raw_infer(
        stack,
        protocol,
        "classify_encoded",
        [("IMAGE_BYTES", np.array([[png_bytes(images[0], "JPEG", quality=95)]], dtype=object), "BYTES")],
    )
    assert jpeg.as_numpy("CLASS_IDS")[0, 0] == pixels.as_numpy("CLASS_IDS")[0, 0]
    mixed = np.array([[png_bytes(images[0])], [b"garbage"]], dtype=object)
    with pytest.raises(InferenceServerException, match=r"IMAGE_BYTES\[1\] is not a PNG or JPEG image"):
        raw_infer(stack, protocol, "classify_encoded", [("IMAGE_BYTES", mixed, "BYTES")])


def _as_glyph_input(images: np.ndarray) -> np.ndarray:
    """What the clients send for these pictures (`load_image`: bright glyph on dark, [0, 1])."""
    from megaclass.python_backend.serving.preprocess import load_image, to_model_input

    return to_model_input(np.stack([load_image(im, IMAGE_SIZE) for im in images]))


# --- malformed HTTP bodies (what the KServe JSON/binary parser of Triton makes of them) -------------------

_BINARY_HEADER = (
    b'{"inputs":[{"name":"EMBEDDING","shape":[1,16],"datatype":"FP32","parameters":{"binary_data_size":64}}]}'
)
RAW_BODIES = {
    "not-json": (b"{not json", {}, r"failed to parse the request JSON buffer"),
    "data-count-mismatch": (
        b'{"inputs":[{"name":"EMBEDDING","shape":[2,16],"datatype":"FP32","data":[1,2,3,4,5]}]}', {},
        r"Shape does not match true shape of 'data' field",
    ),
    "data-not-numbers": (
        b'{"inputs":[{"name":"EMBEDDING","shape":[1,16],"datatype":"FP32","data":["a","b"]}]}', {},
        r"attempt to access JSON non-number as double",
    ),
    "negative-shape": (
        b'{"inputs":[{"name":"EMBEDDING","shape":[-1,16],"datatype":"FP32","data":[1]}]}', {},
        r"Unable to parse 'shape'",
    ),
    "json-overflow-to-inf": (
        b'{"inputs":[{"name":"EMBEDDING","shape":[1,16],"datatype":"FP32","data":[' + b",".join([b"1e39"] * 16) + b"]}]}",
        {}, r"retriever: input EMBEDDING contains NaN or Inf values",
    ),
    "binary-shorter-than-declared": (
        _BINARY_HEADER + b"\0" * 10, {"Inference-Header-Content-Length": str(len(_BINARY_HEADER))},
        r"unexpected size for input 'EMBEDDING', expecting \d+ additional bytes",
    ),
    "header-length-out-of-range": (
        b'{"inputs":[]}', {"Inference-Header-Content-Length": "-5"}, r"inference header size should be in range",
    ),
    "parameter-of-wrong-type": (
        b'{"inputs":[{"name":"EMBEDDING","shape":[1,16],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1]}],'
        b'"parameters":{"top_k":{"x":1}}}', {},
        r"parameter 'top_k' has invalid type",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RAW_BODIES))
def test_malformed_http_bodies_are_refused(stack, good_traffic, name):
    """Triton answers these itself (400, or 500 for its JSON parser's errors) before any model runs."""
    import http.client

    body, headers, match = RAW_BODIES[name]
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", stack.server.http_port, timeout=10)
    try:
        conn.request("POST", "/v2/models/retriever/infer", body=body, headers=headers)
        resp = conn.getresponse()
        status, text = resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()
    assert status in (400, 500), (status, text)
    assert re.search(match, text), text
    good_traffic.assert_healthy(since=start)
