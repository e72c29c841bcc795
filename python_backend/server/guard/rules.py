"""What an inference request may declare, checked against the served model's own config.

Triton 2.51's HTTP/JSON parser allocates `product(shape) × dtype size` before it checks the shape
against the model (a 300-byte request aborts the server), recurses once per JSON nesting level, and
both protocols take the batch dimension modulo 2**32; the classification extension on a BYTES output
and shared-memory parameters crash or reach the host (docs/reliability.md, "Hostile requests"). So
every input's name, datatype, rank, dims (1 ≤ batch ≤ max_batch_size, the rest as configured) and
element count, the data's length against the shape, the parameters and the nesting are checked here.
Pure functions: `Invalid` carries a one-line reason for the client (HTTP 400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from megaclass.python_backend.serving.config import RequestLimits

DTYPE_SIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
              "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8, "BYTES": None}  # fmt: skip
FORBIDDEN_PARAMETERS = frozenset(
    {"shared_memory_region", "shared_memory_offset", "shared_memory_byte_size", "classification"}
)


U64 = (1 << 64) - 1
# Parameters Triton's HTTP parser reads with a fixed JSON type (a wrong one is its 500, not a 400).
TYPED_PARAMETERS = {
    "sequence_id": lambda v: (type(v) is int and 0 <= v <= U64) or type(v) is str,
    "sequence_start": lambda v: type(v) is bool,
    "sequence_end": lambda v: type(v) is bool,
    "priority": lambda v: type(v) is int and 0 <= v <= U64,
    "timeout": lambda v: type(v) is int and 0 <= v <= U64,
    "binary_data_output": lambda v: type(v) is bool,
    "binary_data": lambda v: type(v) is bool,
}


class Invalid(ValueError):
    """A request the front refuses; the message is for the client."""


@dataclass(frozen=True)
class InputSpec:
    datatype: str  # KServe name: FP32, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension; -1: any size


@dataclass(frozen=True)
class ModelSpec:
    """The part of a model's config a request is checked against."""

    name: str
    max_batch_size: int  # 0: the model takes no batch dimension
    inputs: dict[str, InputSpec]

    @classmethod
    def from_triton_config(cls, config: dict[str, Any]) -> ModelSpec:
        """From the JSON of `GET /v2/models/<name>/config` (data_type "TYPE_FP32" -> "FP32")."""
        inputs = {
            i["name"]: InputSpec(i["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES"),
                                 tuple(int(d) for d in i.get("dims", ())))
            for i in config.get("input", [])
        }  # fmt: skip
        return cls(config["name"], int(config.get("max_batch_size", 0)), inputs)


def check_shape(spec: ModelSpec, name: Any, datatype: Any, shape: Any, limits: RequestLimits) -> tuple[int, int | None]:
    """(element count, bytes per element or None for BYTES) of a declared input, or Invalid."""
    want = spec.inputs.get(name) if isinstance(name, str) else None
    if want is None:
        raise Invalid(f"model '{spec.name}' has no input {str(name)[:64]!r}; it takes {sorted(spec.inputs)}")
    if datatype != want.datatype:
        raise Invalid(f"input '{name}' must be {want.datatype}, got {str(datatype)[:32]!r}")
    batched = spec.max_batch_size > 0
    form = ("[batch, " if batched else "[") + ", ".join(str(d) for d in want.dims) + "]"
    rank = len(want.dims) + batched
    if not isinstance(shape, list | tuple) or len(shape) != rank or not all(type(d) is int for d in shape):
        raise Invalid(f"input '{name}' must have shape {form}, got {str(shape)[:80]}")
    max_batch = min(spec.max_batch_size, limits.max_batch)
    if batched and not 1 <= shape[0] <= max_batch:
        raise Invalid(f"input '{name}': the batch must be 1 to {max_batch}, got {shape[0]}")
    for got, dim in zip(shape[batched:], want.dims, strict=True):
        if (dim >= 0 and got != dim) or got < 0 or (dim < 0 and got < 1):
            raise Invalid(f"input '{name}' must have shape {form}, got {list(shape)}")
    count = math.prod(shape)
    if count > limits.max_elements_per_input:
        raise Invalid(f"input '{name}' declares {count} elements; the limit is {limits.max_elements_per_input}")
    return count, DTYPE_SIZE[want.datatype]


def check_parameters(params: Any, limits: RequestLimits, where: str = "request") -> None:
    """At most `max_parameters` scalar parameters, none of the forbidden ones."""
    if params is None:
        return
    if not isinstance(params, dict) or len(params) > limits.max_parameters:
        raise Invalid(f"{where} parameters must be an object of at most {limits.max_parameters} entries")
    for key, value in params.items():
        if key in FORBIDDEN_PARAMETERS:
            raise Invalid(f"parameter '{key}' is not accepted on this port")
        if not isinstance(value, bool | int | float | str) or (isinstance(value, str) and len(value) > 4096):
            raise Invalid(f"parameter '{str(key)[:64]}' must be a bool, a number or a string of up to 4096 characters")
        if key in TYPED_PARAMETERS and not TYPED_PARAMETERS[key](value):
            raise Invalid(f"parameter '{key}' has the wrong type or range: {str(value)[:32]}")


CONTAINERS = frozenset({list, dict})


def nesting_within(obj: Any, limit: int) -> bool:
    """True when `obj` (parsed JSON) nests at most `limit` levels (iterative: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list) and not CONTAINERS.isdisjoint(map(type, item)):  # C speed for leaf lists
            stack.extend((v, depth + 1) for v in item if isinstance(v, list | dict))
    return True


INT_RANGE = {
    t: (-(1 << (8 * n - 1)), (1 << (8 * n - 1)) - 1) for t, n in (("INT8", 1), ("INT16", 2), ("INT32", 4), ("INT64", 8))
}
INT_RANGE |= {t: (0, (1 << (8 * n)) - 1) for t, n in (("UINT8", 1), ("UINT16", 2), ("UINT32", 4), ("UINT64", 8))}


TYPES = {"BOOL": {bool}, "BYTES": {str}} | dict.fromkeys(INT_RANGE, {int})


def _all_fit(values: list, datatype: str) -> bool:
    """Whether every JSON value is an element of `datatype` (Triton's parser answers 500 otherwise);
    one pass per innermost list at C speed (set/min/max/map), since bodies can hold millions."""
    if not set(map(type, values)) <= TYPES.get(datatype, {int, float}):
        return False
    if datatype in INT_RANGE:
        low, high = INT_RANGE[datatype]
        return low <= min(values) and max(values) <= high
    return datatype in TYPES or all(map(math.isfinite, values))


def check_json_data(name: str, data: Any, datatype: str, count: int) -> None:
    """`data` holds exactly `count` elements of `datatype` (iterative: nesting costs no stack)."""
    seen, stack = 0, [data] if isinstance(data, list) else []
    while stack:
        item = stack.pop()
        nested = [v for v in item if type(v) is list]
        values = [v for v in item if type(v) is not list] if nested else item
        if values and not _all_fit(values, datatype):
            bad = next(v for v in values if not _all_fit([v], datatype))
            raise Invalid(f"input '{name}': {repr(bad)[:32]} is not a {datatype} value")
        seen += len(values)
        stack.extend(nested)
    if not isinstance(data, list) or seen != count:
        raise Invalid(f"input '{name}': 'data' must hold exactly {count} values")


OPEN = np.zeros(256, np.int32)
OPEN[list(b"[{")], OPEN[list(b"]}")] = 1, -1
NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def max_bracket_depth(text: bytes, chunk: int = 1 << 20) -> int:
    """The deepest `[`/`{` nesting in `text`, vectorized per 1 MiB (a per-byte Python loop cost 0.5 s
    for a 5 MB body, more than parsing it)."""
    text = text.translate(None, NOT_BRACKETS)  # C speed; usually leaves a few thousand bytes
    deepest, depth = 0, 0
    for start in range(0, len(text), chunk):
        running = np.cumsum(OPEN[np.frombuffer(text, np.uint8, min(chunk, len(text) - start), start)]) + depth
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def parse_json(text: bytes, limits: RequestLimits) -> dict[str, Any]:
    """The request's JSON object; depth is bounded before Python parses it (the brackets are counted)."""
    # a cheap bound before parsing (brackets inside strings can skew it either way: the exact check follows)
    if max_bracket_depth(text) > 4 * limits.max_json_depth:
        raise Invalid(f"the request nests deeper than {limits.max_json_depth} levels")
    try:
        request = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Invalid(f"the request is not valid JSON: {str(exc)[:100]}") from None
    if not isinstance(request, dict) or not nesting_within(request, limits.max_json_depth):
        raise Invalid(f"the request must be a JSON object nested at most {limits.max_json_depth} levels")
    return request


def check_http_infer(spec: ModelSpec, body: bytes, header_length: int | None, limits: RequestLimits) -> None:
    """An HTTP/JSON infer body (binary-data extension when `header_length` is given), or Invalid."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise Invalid("Inference-Header-Content-Length must be between 1 and the body's length")
    request = parse_json(body if header_length is None else body[:header_length], limits)
    check_parameters(request.get("parameters"), limits)
    if not isinstance(request.get("id", ""), str):
        raise Invalid("'id' must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not 0 < len(inputs) <= len(spec.inputs):
        raise Invalid(f"'inputs' must be a list of 1 to {len(spec.inputs)} of the model's inputs")
    binary_total, seen = 0, set()
    for item in inputs:
        if not isinstance(item, dict):
            raise Invalid("each input must be an object with name, datatype, shape and data")
        name = item.get("name")
        if name in seen:
            raise Invalid(f"input '{name}' is given twice")
        seen.add(name)
        count, size = check_shape(spec, name, item.get("datatype"), item.get("shape"), limits)
        params = item.get("parameters") or {}
        check_parameters(params, limits, f"input '{name}'")
        if "binary_data_size" in params:
            binary_total += _binary_size(name, params["binary_data_size"], "data" in item, count, size, limits)
        else:
            check_json_data(name, item.get("data"), item["datatype"], count)
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise Invalid("'outputs' must be a list of objects")
    for out in outputs:
        check_parameters(out.get("parameters"), limits, "output")
    if header_length is not None and binary_total != len(body) - header_length:
        raise Invalid("the inputs' binary_data_size values do not add up to the binary part of the body")


def _binary_size(name: str, size: Any, has_data: bool, count: int, element: int | None, limits: RequestLimits) -> int:
    if type(size) is not int or size < 0 or has_data:
        raise Invalid(f"input '{name}': binary_data_size must be a byte count, without 'data'")
    if element is not None and size != count * element:
        raise Invalid(f"input '{name}': binary_data_size {size} is not {count} elements x {element} bytes")
    if element is None and size > count * (limits.max_image_bytes + 4):
        raise Invalid(f"input '{name}': {size} bytes is over {limits.max_image_bytes} bytes per element")
    return size


def grpc_parameter_values(params: Any) -> dict[str, Any]:
    """The values of a protobuf map of `InferParameter` (its oneof: bool, int64, uint64, double, string;
    None when unset), so that gRPC parameters get the same checks as JSON ones."""
    return {k: getattr(v, v.WhichOneof("parameter_choice") or "", None) for k, v in params.items()}


def check_grpc_infer(spec: ModelSpec, request: Any, limits: RequestLimits) -> None:
    """A parsed `ModelInferRequest`, or Invalid."""
    check_parameters(grpc_parameter_values(request.parameters), limits)
    if not 0 < len(request.inputs) <= len(spec.inputs):
        raise Invalid(f"inputs must be 1 to {len(spec.inputs)} of the model's inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise Invalid("raw_input_contents must hold one entry per input")
    seen = set()
    for i, tensor in enumerate(request.inputs):
        if tensor.name in seen:
            raise Invalid(f"input '{tensor.name}' is given twice")
        seen.add(tensor.name)
        check_parameters(grpc_parameter_values(tensor.parameters), limits, f"input '{tensor.name}'")
        count, size = check_shape(spec, tensor.name, tensor.datatype, list(tensor.shape), limits)
        if raw and size is not None and len(raw[i]) != count * size:
            raise Invalid(f"input '{tensor.name}': {len(raw[i])} bytes for {count} elements x {size} bytes")
        if raw and size is None and len(raw[i]) > count * (limits.max_image_bytes + 4):
            raise Invalid(f"input '{tensor.name}': over {limits.max_image_bytes} bytes per element")
    for out in request.outputs:
        check_parameters(grpc_parameter_values(out.parameters), limits, "output")
