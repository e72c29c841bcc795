"""Hostile hand-written requests against the real server behind the validating front (server/guard/).

Each request below crashes or wedges tritonserver 2.51 when sent to it directly (docs/reliability.md,
"Hostile requests"); through the front each gets a 4xx / INVALID_ARGUMENT with a reason, the server's
PID stays the same, and good requests sent meanwhile are answered correctly. A bounded hypothesis
fuzz of the JSON and protobuf wire formats ends the module.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import io
import json
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from megaclass.export.repository.tiny import EMBEDDING_DIM
from megaclass.python_backend.server.guard.launch import start_guarded_server
from megaclass.python_backend.server.guard.rules import ModelSpec
from megaclass.python_backend.server.triton_server import free_port

pytestmark = pytest.mark.integration
INFER = "/inference.GRPCInferenceService/ModelInfer"
# gRPC statuses that mean the server failed, lost the request or hung (a refusal is INVALID_ARGUMENT etc.)
SERVER_FAILURES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
                   grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS)  # fmt: skip


@pytest.fixture(scope="module")
def guarded(tiny_stack, tmp_path_factory):
    server = start_guarded_server(
        tiny_stack.repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        work_dir=tmp_path_factory.mktemp("guarded"),
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def _post(guarded, path: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", guarded.http_port, timeout=20)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        reply = conn.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    finally:
        conn.close()


def _embedding_body(shape, count: int) -> bytes:
    inputs = [{"name": "EMBEDDING", "shape": shape, "datatype": "FP32", "data": [0.0] * count}]
    return json.dumps({"inputs": inputs}).encode()


def _good_answer(guarded, rows: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(guarded.http_url)
    inp = httpclient.InferInput("EMBEDDING", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return client.infer("retriever", [inp]).as_numpy("CLASS_IDS")


HTTP_CASES = {
    "issue: shape [1e8, dim] with one row of data (SIGABRT)": ("/v2/models/retriever/infer", _embedding_body([100000000, EMBEDDING_DIM], EMBEDDING_DIM), {}),
    "2**64-1 batch (length_error abort)": ("/v2/models/retriever/infer", _embedding_body([18446744073709551615, EMBEDDING_DIM], EMBEDDING_DIM), {}),
    "2**58+1 batch, byte size wraps (heap overflow)": ("/v2/models/retriever/infer", _embedding_body([288230376151711745, EMBEDDING_DIM], 4096), {}),
    "batch 2**32+1 taken mod 2**32": ("/v2/models/retriever/infer", _embedding_body([4294967297, EMBEDDING_DIM], EMBEDDING_DIM), {}),
    "classify [1e8, 1, 16, 16]": ("/v2/models/classify/infer", json.dumps({"inputs": [{"name": "IMAGE", "shape": [100000000, 1, 16, 16], "datatype": "FP32", "data": [0.0] * 256}]}).encode(), {}),
    "data nested 100000 deep (SIGSEGV)": ("/v2/models/retriever/infer", b'{"inputs":[{"name":"EMBEDDING","shape":[1,16],"datatype":"FP32","data":' + b"[" * 100000 + b"0.0" + b"]" * 100000 + b"}]}", {}),
    "classification on a BYTES output (SIGFPE)": ("/v2/models/retriever/infer", json.dumps({"inputs": json.loads(_embedding_body([1, EMBEDDING_DIM], EMBEDDING_DIM))["inputs"], "outputs": [{"name": "LABELS", "parameters": {"classification": 3}}]}).encode(), {}),
    "gzip bomb": ("/v2/models/retriever/infer", gzip.compress(b" " * (8 << 20)), {"Content-Encoding": "gzip"}),
    "shared-memory register": ("/v2/systemsharedmemory/region/r/register", json.dumps({"key": "/x", "offset": 0, "byte_size": 64}).encode(), {}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_each_crashing_http_request_is_refused_and_the_server_lives(guarded, tiny_stack, case) -> None:
    pid = guarded.server.process.pid
    path, body, headers = HTTP_CASES[case]
    status, text = _post(guarded, path, body, headers)
    assert 400 <= status < 500, (case, status, text)
    assert "error" in text
    assert guarded.server.process.pid == pid and guarded.server.is_running()
    rows = tiny_stack.index._vectors[:2].astype(np.float32)
    assert list(_good_answer(guarded, rows)[:, 0]) == list(tiny_stack.index.search(rows, 1).class_ids[:, 0])


def test_crashing_grpc_requests_are_refused_and_good_ones_answered(guarded, tiny_stack) -> None:
    channel = grpc.insecure_channel(guarded.grpc_url)
    call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    bad = []
    classification = service_pb2.ModelInferRequest(model_name="retriever")
    classification.inputs.add(name="EMBEDDING", datatype="FP32", shape=[1, EMBEDDING_DIM])
    classification.raw_input_contents.append(bytes(4 * EMBEDDING_DIM))
    classification.outputs.add(name="LABELS").parameters["classification"].int64_param = 3
    bad.append(classification)
    wrapped = service_pb2.ModelInferRequest(model_name="retriever")
    wrapped.inputs.add(name="EMBEDDING", datatype="FP32", shape=[2**32 + 1, EMBEDDING_DIM])
    wrapped.raw_input_contents.append(bytes(4 * EMBEDDING_DIM))
    bad.append(wrapped)
    for request in [*bad, b"\xff\xff not protobuf"]:
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        with pytest.raises(grpc.RpcError) as info:
            call(raw, timeout=20)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client = grpcclient.InferenceServerClient(guarded.grpc_url)
    rows = tiny_stack.index._vectors[:3].astype(np.float32)
    inp = grpcclient.InferInput("EMBEDDING", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    found = client.infer("retriever", [inp]).as_numpy("CLASS_IDS")
    assert list(found[:, 0]) == list(tiny_stack.index.search(rows, 1).class_ids[:, 0])
    assert guarded.server.is_running()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
DIMS = st.lists(
    st.one_of(st.integers(-2, 20), st.sampled_from([2**31, 2**32 + 1, 2**58 + 1, 2**63 - 1, 2**64 - 1])), max_size=4
)
HOSTILE_JSON = st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["EMBEDDING", "TOP_K", "IMAGE", "X"]),
        "shape": DIMS,
        "datatype": st.sampled_from(["FP32", "INT32", "BYTES", "FP16", "BOOL"]),
        "data": st.lists(st.floats(allow_nan=False, width=32), max_size=64) | JSON_VALUES,
    }, optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size", "classification", "x"]), JSON_VALUES, max_size=2)}),
        max_size=3)},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["LABELS", "SCORES", "CLASS_IDS"])},
                                                        optional={"parameters": st.dictionaries(st.sampled_from(["classification", "binary_data"]), JSON_VALUES, max_size=2)}), max_size=2),
              "parameters": st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)},
)  # fmt: skip


def test_fuzzed_wire_requests_never_crash_or_hang_the_server(guarded, tiny_stack) -> None:
    """Hypothesis-made JSON and protobuf requests to every model, with good requests flowing meanwhile."""
    pid = guarded.server.process.pid
    rows = tiny_stack.index._vectors[:2].astype(np.float32)
    expected = list(tiny_stack.index.search(rows, 1).class_ids[:, 0])
    stop, failures, answered = threading.Event(), [], [0]

    def good_traffic() -> None:
        while not stop.is_set():
            try:
                assert list(_good_answer(guarded, rows)[:, 0]) == expected
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(repr(exc))

    traffic = threading.Thread(target=good_traffic, daemon=True)
    traffic.start()
    channel = grpc.insecure_channel(guarded.grpc_url)
    call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=HOSTILE_JSON, model=st.sampled_from(["classify", "classify_encoded", "decode", "encoder", "retriever"]),
           raw=st.binary(max_size=200))  # fmt: skip
    def fuzz(body, model, raw) -> None:
        status, _ = _post(guarded, f"/v2/models/{model}/infer", json.dumps(body).encode())
        assert status < 500, status  # a refusal or Triton's own 4xx, never a crash or a server error
        request = service_pb2.ModelInferRequest(model_name=model)
        for item in body["inputs"]:
            dims = [d for d in item["shape"] if -(2**63) <= d < 2**63]
            request.inputs.add(name=item["name"], datatype=item["datatype"], shape=dims)
        request.raw_input_contents.extend([raw] * len(body["inputs"]))
        for payload in (request.SerializeToString(), raw):
            try:
                call(payload, timeout=20)
            except grpc.RpcError as exc:
                assert exc.code() not in SERVER_FAILURES, exc

    try:
        fuzz()
    finally:
        stop.set()
        traffic.join(timeout=30)
    assert not failures, failures[:3]
    assert answered[0] > 0
    assert guarded.server.process.pid == pid and guarded.server.is_running()


ADMIN_PATHS = st.sampled_from([
    "/v2/repository/index", "/v2/repository/models/retriever/load", "/v2/repository/models/retriever/unload",
    "/v2/repository/models/../x/load", "/v2/systemsharedmemory/region/r/register", "/v2/cudasharedmemory/region/r/register",
    "/v2/systemsharedmemory/unregister", "/v2/trace/setting", "/v2/models/retriever/trace/setting", "/v2/logging",
])  # fmt: skip
ADMIN_METHODS = [
    f"/inference.GRPCInferenceService/{name}"
    for name in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryRegister",
                 "CudaSharedMemoryRegister", "TraceSetting", "LogSettings")
]  # fmt: skip


def test_fuzzed_admin_endpoints_never_crash_the_server(guarded, tiny_stack) -> None:
    """Hostile repository, shared-memory, trace and logging requests: answered (Triton's own status or the
    front's refusal), never a lost upstream (502), a hang or UNAVAILABLE; every model stays loaded."""
    pid = guarded.server.process.pid
    channel = grpc.insecure_channel(guarded.grpc_url)
    calls = [channel.unary_unary(m, request_serializer=None, response_deserializer=None) for m in ADMIN_METHODS]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(path=ADMIN_PATHS, body=JSON_VALUES, raw=st.binary(max_size=200), method=st.integers(0, len(calls) - 1))
    def fuzz(path, body, raw, method) -> None:
        status, text = _post(guarded, path, json.dumps(body).encode())
        assert status != 502, (path, text)  # 502: the front lost Triton
        if "sharedmemory" in path:
            assert status == 403, (path, status, text)
        try:
            calls[method](raw, timeout=20)
        except grpc.RpcError as exc:  # Triton answers a load/unload under polling with its own UNAVAILABLE
            lost = exc.code() == grpc.StatusCode.UNAVAILABLE and "is not allowed" not in (exc.details() or "")
            assert not lost and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, exc

    fuzz()
    states = {
        m["name"]: m.get("state")
        for m in httpclient.InferenceServerClient(guarded.http_url).get_model_repository_index()
    }
    assert set(states.values()) == {"READY"} and len(states) == 5, states
    rows = tiny_stack.index._vectors[:2].astype(np.float32)
    assert list(_good_answer(guarded, rows)[:, 0]) == list(tiny_stack.index.search(rows, 1).class_ids[:, 0])
    assert guarded.server.process.pid == pid and guarded.server.is_running()


SCALARS = st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats(allow_nan=False) | st.text(max_size=12)
PARAMETERS = st.dictionaries(
    st.sampled_from(["top_k", "threshold", "sequence_id", "sequence_start", "priority", "timeout",
                     "binary_data_output", "triton_enable_empty_final_response", "x"]),
    SCALARS, max_size=3,
)  # fmt: skip
NUMBERS = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def near_valid(draw, specs: dict) -> tuple[str, list, dict, list]:
    """A request the front lets through: the model's own input names, datatypes and shapes with hostile
    values, parameters and requested outputs, so Triton and the models see what a client can send."""
    model = draw(st.sampled_from(sorted(specs)))
    spec = specs[model]
    batch = draw(st.integers(1, min(spec.max_batch_size, 4)))
    names = sorted(spec.inputs)
    chosen = [names[0], *(n for n in names[1:] if draw(st.booleans()))]
    inputs = []
    for name in chosen:
        want = spec.inputs[name]
        shape = [batch, *(d if d > 0 else draw(st.integers(1, 3)) for d in want.dims)]
        count = int(np.prod(shape))
        if want.datatype == "BYTES":
            values = draw(st.lists(st.binary(max_size=64) | st.just(_png()), min_size=count, max_size=count))
            array = np.array(values, dtype=np.object_).reshape(shape)
        else:
            info = np.iinfo(NUMBERS[want.datatype]) if want.datatype != "FP32" else None
            element = (st.integers(int(info.min), int(info.max)) if info else
                       st.floats(allow_nan=False, allow_infinity=False, width=32))  # fmt: skip
            values = draw(st.lists(element, min_size=count, max_size=count))
            array = np.array(values, dtype=NUMBERS[want.datatype]).reshape(shape)
        inputs.append((name, want.datatype, array))
    outputs = draw(st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["CLASS_IDS", "SCORES", "LABELS", "EMBEDDING", "IMAGE", "X"])},
        optional={"parameters": st.dictionaries(st.sampled_from(["binary_data", "x"]), SCALARS, max_size=1)}),
        max_size=2, unique_by=lambda o: o["name"]))  # fmt: skip
    clean = draw(st.booleans())  # half the requests without parameters or outputs: mostly answered
    return model, inputs, {} if clean else draw(PARAMETERS), [] if clean else outputs


def _raw(datatype: str, array: np.ndarray) -> bytes:
    return serialize_byte_tensor(array).tobytes() if datatype == "BYTES" else array.tobytes()


def _http_body(inputs: list, parameters: dict, outputs: list, binary: bool) -> tuple[bytes, dict]:
    """JSON `data`, or the binary-data extension (`binary_data_size` and the raw bytes after the header)."""
    items = [{"name": n, "datatype": t, "shape": list(a.shape)} for n, t, a in inputs]
    for item, (_, datatype, array) in zip(items, inputs, strict=True):
        if binary:
            item["parameters"] = {"binary_data_size": len(_raw(datatype, array))}
        else:
            item["data"] = (
                [v.decode("latin-1") for v in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
            )
    header = json.dumps({"inputs": items, "parameters": parameters, "outputs": outputs}).encode()
    if not binary:
        return header, {}
    tail = b"".join(_raw(t, a) for _, t, a in inputs)
    return header + tail, {"Inference-Header-Content-Length": str(len(header))}


def _grpc_request(model: str, inputs: list, parameters: dict) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, array in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(_raw(datatype, array))
    for key, value in parameters.items():
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            request.parameters[key].int64_param = value
        elif isinstance(value, str):
            request.parameters[key].string_param = value
    return request.SerializeToString()


def test_fuzzed_near_valid_requests_get_answers_or_4xx_never_5xx(guarded, tiny_stack) -> None:
    """Requests shaped exactly as each model declares (JSON or binary-data HTTP, and gRPC), with hostile
    values, parameters and outputs, reach
    Triton and the models: every one is answered or refused with a 4xx / client status, never a 5xx or a
    hang, while good HTTP and gRPC requests flow and are answered correctly; the PID is unchanged."""
    pid = guarded.server.process.pid
    configs = httpclient.InferenceServerClient(guarded.http_url)
    names = ["classify", "classify_encoded", "decode", "encoder", "retriever"]
    specs = {m: ModelSpec.from_triton_config(configs.get_model_config(m)) for m in names}
    rows = tiny_stack.index._vectors[:2].astype(np.float32)
    expected = list(tiny_stack.index.search(rows, 1).class_ids[:, 0])
    stop, failures, answered, statuses = threading.Event(), [], [0, 0], collections.Counter()

    def good_traffic(which: int) -> None:
        client = grpcclient.InferenceServerClient(guarded.grpc_url) if which else None
        while not stop.is_set():
            try:
                if client is None:
                    got = _good_answer(guarded, rows)
                else:
                    inp = grpcclient.InferInput("EMBEDDING", list(rows.shape), "FP32")
                    inp.set_data_from_numpy(rows)
                    got = client.infer("retriever", [inp], client_timeout=20).as_numpy("CLASS_IDS")
                assert list(got[:, 0]) == expected
                answered[which] += 1
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(repr(exc))

    threads = [threading.Thread(target=good_traffic, args=(w,), daemon=True) for w in (0, 1)]
    for t in threads:
        t.start()
    call = grpc.insecure_channel(guarded.grpc_url).unary_unary(
        INFER, request_serializer=None, response_deserializer=None
    )

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(request=near_valid(specs), binary=st.booleans())
    def fuzz(request, binary) -> None:
        model, inputs, parameters, outputs = request
        body, headers = _http_body(inputs, parameters, outputs, binary)
        status, text = _post(guarded, f"/v2/models/{model}/infer", body, headers)
        assert status < 500, (model, status, text[:300])
        statuses[f"http {status}"] += 1
        try:
            call(_grpc_request(model, inputs, parameters), timeout=20)
            statuses["grpc OK"] += 1
        except grpc.RpcError as exc:
            assert exc.code() not in SERVER_FAILURES, (model, exc.code(), exc.details())
            statuses[f"grpc {exc.code().name}"] += 1

    try:
        fuzz()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures[:3]
    assert min(answered) > 0, answered
    assert statuses["http 200"] and statuses["grpc OK"], statuses  # the fuzz reaches the models, not just the front
    assert guarded.server.process.pid == pid and guarded.server.is_running()
