"""Fuzzing the request decoding (hypothesis): the encoder's and the retriever's inputs and
options, and encoded images. Whatever arrives, the decoders return exactly what the models
expect or raise `InputError` (a clear client error); nothing else escapes. A short live round
sends generated requests to the real server and checks it answers each with a result or a
client error and stays healthy.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from megaclass.python_backend.serving.image_decoding import DecodeLimits, decode_batch
from megaclass.python_backend.serving.request_batching import InputError, TensorSpec, check_input
from megaclass.python_backend.serving.retriever_service import parse_options

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64])
SPECS = [TensorSpec("EMBEDDING", np.dtype(np.float32), (16,)), TensorSpec("IMAGE", np.dtype(np.float32), (1, 8, 8))]


def arrays_near(spec: TensorSpec):
    """Arrays of any dtype whose shape is often, but not always, right for `spec`."""
    right = st.tuples(st.integers(0, 20), *[st.just(d) for d in spec.item_shape])
    shapes = st.one_of(right, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9))
    return st.tuples(DTYPES, shapes).flatmap(lambda ds: hnp.arrays(ds[0], ds[1]))


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@FAST
@given(data=st.data())
def test_tensor_decoding_returns_what_the_model_expects_or_a_clear_error(spec, data):
    array = data.draw(arrays_near(spec))
    max_rows = data.draw(st.one_of(st.none(), st.integers(1, 16)))
    try:
        out = check_input(spec, array, max_rows)
    except InputError as exc:
        assert spec.name in str(exc)
        return
    assert out.dtype == spec.dtype and out.shape[1:] == spec.item_shape and out.flags.c_contiguous
    assert 1 <= out.shape[0] <= (max_rows or out.shape[0]) and np.isfinite(out).all()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
PARAMETERS = st.one_of(
    st.none(),
    st.text(max_size=30),  # not necessarily JSON
    st.dictionaries(st.sampled_from(["top_k", "threshold", "index_dir", "x"]), JSON, max_size=3).map(json.dumps),
    JSON.map(json.dumps),
)
OPTION = st.one_of(
    st.none(),
    hnp.arrays(np.int32, st.tuples(st.integers(0, 4), st.just(1)), elements=st.integers(-(2**31), 2**31 - 1)),
)
THRESHOLD = st.one_of(st.none(), hnp.arrays(np.float32, st.tuples(st.integers(0, 4), st.just(1))))


@FAST
@given(top_k=OPTION, threshold=THRESHOLD, parameters=PARAMETERS, num_classes=st.integers(1, 500))
def test_retriever_options_are_in_range_or_a_clear_error(top_k, threshold, parameters, num_classes):
    try:
        k, t = parse_options(top_k, threshold, parameters, default_top_k=5, max_top_k=100, num_classes=num_classes)
    except InputError:
        return
    assert isinstance(k, int) and 1 <= k <= min(100, num_classes)
    assert t is None or (isinstance(t, float) and math.isfinite(t) and -1.0 <= t <= 1.0)


def _encoded(seed: int, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((12, 10, 3)) * 255).astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


VALID = [_encoded(0, "PNG"), _encoded(1, "JPEG")]


@st.composite
def encoded_bytes(draw) -> bytes:
    """Random bytes, or a valid PNG/JPEG cut short, with bytes flipped, or with junk appended."""
    kind = draw(st.sampled_from(["random", "cut", "flip", "append", "valid"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(VALID)))
    if kind == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "flip":
        for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=50))
    return bytes(data)


@FAST
@given(rows=st.lists(encoded_bytes(), min_size=0, max_size=4))
def test_encoded_image_decoding_returns_pixels_or_a_clear_error(rows):
    batch = np.empty((len(rows), 1), dtype=object)
    for i, r in enumerate(rows):
        batch[i, 0] = r
    try:
        out = decode_batch(batch, 8, DecodeLimits(max_bytes=1 << 16, max_pixels=1 << 16))
    except InputError as exc:
        assert "IMAGE_BYTES" in str(exc)
        return
    assert out.dtype == np.float32 and out.shape == (len(rows), 1, 8, 8)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.integration
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_live_server_answers_generated_requests_with_a_result_or_a_client_error(stack, data):
    from tritonclient.utils import InferenceServerException

    from .conftest import raw_infer

    protocol = data.draw(st.sampled_from(["grpc", "http"]))
    dtype, triton = data.draw(st.sampled_from([(np.float32, "FP32"), (np.float64, "FP64"), (np.int32, "INT32")]))
    rows = data.draw(st.integers(0, 20))
    width = data.draw(st.sampled_from([16, 16, 15, 1]))
    values = data.draw(
        hnp.arrays(
            dtype,
            (rows, width),
            elements=hnp.from_dtype(np.dtype(dtype), allow_nan=True) if dtype != np.int32 else None,
        )
    )
    inputs = [("EMBEDDING", values, triton)]
    if data.draw(st.booleans()):
        inputs.append(("TOP_K", np.full((rows, 1), data.draw(st.integers(-5, 50)), np.int32), "INT32"))
    params = data.draw(
        st.dictionaries(
            st.sampled_from(["top_k", "threshold"]),
            st.integers(-3, 30) | st.floats(-2, 2) | st.text(max_size=4),
            max_size=2,
        )
    )
    try:
        res = raw_infer(stack, protocol, "retriever", inputs, parameters=params or None)
        assert res.as_numpy("CLASS_IDS").shape[0] == rows
    except InferenceServerException as exc:
        assert str(exc.status()) in ("StatusCode.INVALID_ARGUMENT", "400"), (exc.status(), exc.message())
    assert not [r for r in stack.server.watchdog.recoveries if r.error]
