"""The fast BYTES serialiser gives the Python backend's own bytes, and defers to it otherwise."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest

from megaclass.python_backend.serving import bytes_tensors


def backend_utils() -> types.ModuleType:
    """The Python backend's own triton_python_backend_utils, from the pytriton wheel (plain Python)."""
    import pytriton

    path = Path(pytriton.__file__).parent / "tritonserver/backends/python/triton_python_backend_utils.py"
    spec = importlib.util.spec_from_file_location("stock_triton_python_backend_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ARRAYS = [
    np.array([[b"cat", b"", "\u732b".encode(), b"\x00tail\x00"]], dtype=object),
    np.array([[b"1:abc"]] * 3, dtype=object),
    np.array([[b"a", b"bb"], [b"ccc", b"dddd"]], dtype=object).T,  # not C-contiguous: C order still
    np.array([[b"x" * 70000]], dtype=object),  # a length past 16 bits
]


@pytest.mark.parametrize("array", ARRAYS)
def test_serialize_bytes_matches_the_backends_serialiser(array):
    stock = backend_utils()
    assert bytes_tensors.serialize_bytes(array) == stock.serialize_byte_tensor(array)


@pytest.mark.parametrize(
    "array",
    [
        np.array([["text", b"bytes"]], dtype=object),  # a str element: the backend encodes it
        np.array([[b"a", b"b"]], dtype="S1"),  # numpy bytes_
        np.zeros((0, 2), dtype=object),  # empty
        np.array([[1, 2]], dtype=object),  # not bytes at all
    ],
)
def test_anything_else_goes_to_the_backends_serialiser(array):
    stock = backend_utils()
    assert bytes_tensors.serialize_bytes(array) is None
    fast = bytes_tensors.faster_serializer(stock.serialize_byte_tensor)
    assert fast(array) == stock.serialize_byte_tensor(array)


def test_install_wraps_the_module_once():
    module = backend_utils()
    original = module.serialize_byte_tensor
    bytes_tensors.install(module)
    bytes_tensors.install(module)  # a second model instance in the same stub process
    assert module.serialize_byte_tensor.original is original
    assert module.serialize_byte_tensor(ARRAYS[0]) == original(ARRAYS[0])
