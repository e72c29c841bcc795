"""The front's checks on declared requests (no server): each hostile class refused with a reason."""

from __future__ import annotations

import json

import pytest
from tritonclient.grpc import service_pb2

from megaclass.python_backend.server.guard.rules import (
    Invalid,
    ModelSpec,
    check_grpc_infer,
    check_http_infer,
    max_bracket_depth,
    parse_json,
)
from megaclass.python_backend.serving.config import RequestLimits

LIMITS = RequestLimits()
RETRIEVER = ModelSpec.from_triton_config(
    {"name": "retriever", "max_batch_size": 16,
     "input": [{"name": "EMBEDDING", "data_type": "TYPE_FP32", "dims": [16]},
               {"name": "TOP_K", "data_type": "TYPE_INT32", "dims": [1]}]}
)  # fmt: skip
DECODE = ModelSpec.from_triton_config(
    {
        "name": "decode",
        "max_batch_size": 16,
        "input": [{"name": "IMAGE_BYTES", "data_type": "TYPE_STRING", "dims": [1]}],
    }
)


def _body(shape, data, **extra) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "EMBEDDING", "shape": shape, "datatype": "FP32", "data": data, **extra}]}
    ).encode()


def test_a_good_request_passes_and_the_spec_reads_tritons_config() -> None:
    check_http_infer(RETRIEVER, _body([2, 16], [0.0] * 32), None, LIMITS)
    assert DECODE.inputs["IMAGE_BYTES"].datatype == "BYTES" and RETRIEVER.inputs["EMBEDDING"].dims == (16,)


@pytest.mark.parametrize(
    ("shape", "data", "reason"),
    [
        ([100000000, 16], [0.0] * 16, "batch must be 1 to 16"),  # the request: SIGABRT in Triton 2.51
        ([18446744073709551615, 16], [0.0] * 16, "batch must be 1 to 16"),  # 2**64-1: length_error abort
        ([288230376151711745, 16], [0.0] * 4096, "batch must be 1 to 16"),  # wraps: heap overflow
        ([4294967297, 16], [0.0] * 16, "batch must be 1 to 16"),  # batch mod 2**32 bypass
        ([0, 16], [], "batch must be 1 to 16"),
        ([1, 17], [0.0] * 17, "must have shape [batch, 16]"),
        ([1, 16, 1], [0.0] * 16, "must have shape"),
        ([1, "16"], [0.0] * 16, "must have shape"),
        ([2, 16], [0.0] * 16, "exactly 32 values"),
        ([1, 16], None, "exactly 16 values"),
    ],
)
def test_declared_shapes_are_checked_before_triton_sees_them(shape, data, reason) -> None:
    with pytest.raises(Invalid, match=reason.replace("[", r"\[")):
        check_http_infer(RETRIEVER, _body(shape, data), None, LIMITS)


def test_deep_nesting_is_refused_without_recursing() -> None:
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(Invalid, match="nests deeper"):
        parse_json(deep, LIMITS)
    with pytest.raises(Invalid, match="nested at most"):
        check_http_infer(RETRIEVER, json.dumps({"inputs": [], "x": [[[[[[[[[[1]]]]]]]]]]}).encode(), None, LIMITS)


def test_classification_and_shared_memory_parameters_are_refused() -> None:
    body = json.loads(_body([1, 16], [0.0] * 16))
    body["outputs"] = [{"name": "LABELS", "parameters": {"classification": 3}}]
    with pytest.raises(Invalid, match="classification"):
        check_http_infer(RETRIEVER, json.dumps(body).encode(), None, LIMITS)
    with pytest.raises(Invalid, match="shared_memory_region"):
        check_http_infer(RETRIEVER, _body([1, 16], [0.0] * 16, parameters={"shared_memory_region": "r"}), None, LIMITS)


def test_binary_sizes_must_match_the_shape_and_the_body() -> None:
    header = json.dumps({"inputs": [{"name": "EMBEDDING", "shape": [1, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64}}]}).encode()  # fmt: skip
    check_http_infer(RETRIEVER, header + bytes(64), len(header), LIMITS)
    with pytest.raises(Invalid, match="do not add up"):
        check_http_infer(RETRIEVER, header + bytes(60), len(header), LIMITS)
    with pytest.raises(Invalid, match="Inference-Header-Content-Length"):
        check_http_infer(RETRIEVER, header, len(header) + 5, LIMITS)


def test_too_many_parameters_and_unknown_inputs_are_refused() -> None:
    with pytest.raises(Invalid, match="at most 32 entries"):
        check_http_infer(
            RETRIEVER, _body([1, 16], [0.0] * 16, parameters={f"p{i}": 1 for i in range(40)}), None, LIMITS
        )
    with pytest.raises(Invalid, match="has no input"):
        check_http_infer(
            RETRIEVER,
            json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode(),
            None,
            LIMITS,
        )


def test_grpc_requests_are_checked_like_json_ones() -> None:
    request = service_pb2.ModelInferRequest(model_name="retriever")
    tensor = request.inputs.add(name="EMBEDDING", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(bytes(64))
    check_grpc_infer(RETRIEVER, request, LIMITS)
    del tensor.shape[:]
    tensor.shape.extend([2**32 + 1, 16])
    with pytest.raises(Invalid, match="batch must be 1 to 16"):
        check_grpc_infer(RETRIEVER, request, LIMITS)
    del tensor.shape[:]
    tensor.shape.extend([1, 16])
    request.raw_input_contents.append(bytes(64))
    with pytest.raises(Invalid, match="one entry per input"):
        check_grpc_infer(RETRIEVER, request, LIMITS)
    request.raw_input_contents.pop()
    request.outputs.add(name="LABELS").parameters["classification"].int64_param = 3
    with pytest.raises(Invalid, match="classification"):
        check_grpc_infer(RETRIEVER, request, LIMITS)


def test_the_element_limit_comes_from_the_config() -> None:
    small = RequestLimits(max_elements_per_input=31)
    with pytest.raises(Invalid, match="the limit is 31"):
        check_http_infer(RETRIEVER, _body([2, 16], [0.0] * 32), None, small)


def test_the_batch_and_image_limits_come_from_the_config() -> None:
    """The lower of the model's max_batch_size and RequestLimits.max_batch applies; BYTES elements are
    bounded by max_image_bytes (the decode model's own limit, one setting for both)."""
    small = RequestLimits(max_batch=4, max_image_bytes=100)
    check_http_infer(RETRIEVER, _body([4, 16], [0.0] * 64), None, small)
    with pytest.raises(Invalid, match="the batch must be 1 to 4, got 5"):
        check_http_infer(RETRIEVER, _body([5, 16], [0.0] * 80), None, small)
    with pytest.raises(Invalid, match="the batch must be 1 to 16, got 17"):
        check_http_infer(RETRIEVER, _body([17, 16], [0.0] * 272), None, LIMITS)
    image = {"name": "IMAGE_BYTES", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 105}}
    header = json.dumps({"inputs": [image]}).encode()
    with pytest.raises(Invalid, match="over 100 bytes per element"):
        check_http_infer(DECODE, header + b"x" * 105, len(header), small)
    check_http_infer(DECODE, header + b"x" * 105, len(header), LIMITS)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (["a"] * 16, "'a' is not a FP32 value"),
        ([True] * 16, "True is not a FP32 value"),
        ([None] * 16, "None is not a FP32 value"),
        ([float("inf")] * 16, "inf is not a FP32 value"),  # what Python makes of 1e400
    ],
)
def test_json_data_must_be_of_the_declared_type(data, reason) -> None:
    """Triton's parser answers a wrongly typed `data` element with a 500; the front makes it a 400."""
    with pytest.raises(Invalid, match=reason):
        check_http_infer(RETRIEVER, _body([1, 16], data), None, LIMITS)
    top_k = {"name": "TOP_K", "shape": [1, 1], "datatype": "INT32"}
    for value in (2**31, 1.5, "3"):
        body = json.dumps({"inputs": [{**top_k, "data": [value]}]}).encode()
        with pytest.raises(Invalid, match="is not a INT32 value"):
            check_http_infer(RETRIEVER, body, None, LIMITS)
    check_http_infer(RETRIEVER, json.dumps({"inputs": [{**top_k, "data": [3]}]}).encode(), None, LIMITS)


@pytest.mark.parametrize(
    "params",
    [{"sequence_id": -1}, {"sequence_id": 1.5}, {"priority": "high"}, {"timeout": True}, {"sequence_start": 1},
     {"binary_data_output": "yes"}],
)  # fmt: skip
def test_parameters_triton_reads_with_a_fixed_type_are_typed_here(params) -> None:
    """Found by the near-valid fuzz: a wrongly typed sequence_id/priority/timeout/... was Triton's 500."""
    body = json.loads(_body([1, 16], [0.0] * 16))
    with pytest.raises(Invalid, match="wrong type or range"):
        check_http_infer(RETRIEVER, json.dumps({**body, "parameters": params}).encode(), None, LIMITS)
    with pytest.raises(Invalid, match="'id' must be a string"):
        check_http_infer(RETRIEVER, json.dumps({**body, "id": 7}).encode(), None, LIMITS)
    good = {"sequence_id": "s1", "priority": 1, "timeout": 1000, "sequence_start": True, "binary_data_output": False}
    check_http_infer(RETRIEVER, json.dumps({**body, "id": "r1", "parameters": good}).encode(), None, LIMITS)


def test_bracket_depth_is_counted_across_chunks_without_a_per_byte_loop() -> None:
    """The pre-parse depth bound: vectorized (a per-byte Python loop took 0.5 s for a 5 MB body)."""
    text = b'{"a": [[1, "x"], {"b": [[[2]]]}]}'
    assert max_bracket_depth(text) == 6
    assert all(max_bracket_depth(text, chunk) == 6 for chunk in (1, 2, 3, 7))
    hidden = b'{"s": "' + b"]" * 1000 + b'", "d": ' + b"[" * 1000 + b"]" * 1000 + b"}"  # strings fool the count
    with pytest.raises(Invalid, match="nested at most 8 levels|not valid JSON"):
        parse_json(hidden, LIMITS)  # ... and the exact check after parsing still refuses it
    assert max_bracket_depth(b"") == 0 and max_bracket_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    with pytest.raises(Invalid, match="nests deeper than 8 levels"):
        parse_json(b"x" * 1000 + b"[" * 33, LIMITS)


def test_grpc_parameters_are_checked_by_their_protobuf_values() -> None:
    """A gRPC sequence request (uint64 id, bool start/end, as tritonclient sends them) passes; the
    same parameter with the wrong protobuf type is refused like its JSON form."""
    request = service_pb2.ModelInferRequest(model_name="retriever")
    request.inputs.add(name="EMBEDDING", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(bytes(64))
    request.parameters["sequence_id"].uint64_param = 7
    request.parameters["sequence_start"].bool_param = True
    request.parameters["sequence_end"].bool_param = False
    request.parameters["priority"].uint64_param = 1
    check_grpc_infer(RETRIEVER, request, LIMITS)
    request.parameters["sequence_start"].string_param = "yes"
    with pytest.raises(Invalid, match="sequence_start"):
        check_grpc_infer(RETRIEVER, request, LIMITS)
