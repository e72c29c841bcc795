"""The tritonserver launcher: locating the wheel's pieces and clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from megaclass.python_backend.triton_server import (
    TritonError,
    free_port,
    locate_triton,
    server_environment,
    start_server,
)

BROKEN_MODEL = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("boom: the index file is corrupt")

    def execute(self, requests):
        return []
'''

BROKEN_CONFIG = """
name: "broken"
backend: "python"
max_batch_size: 4
input [{ name: "X", data_type: TYPE_FP32, dims: [2] }]
output [{ name: "Y", data_type: TYPE_FP32, dims: [2] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""


def test_locate_triton_finds_binary_and_stub():
    install = locate_triton()
    assert install.binary.is_file() and install.stub.is_file()
    env = server_environment(install)
    assert str(install.libs_dir) in env["LD_LIBRARY_PATH"]


def test_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(TritonError, match="does not exist"):
        start_server(tmp_path / "nope")


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(TritonError, match=f"port {port} .* already in use"):
            start_server(tmp_path, http_port=port, grpc_port=free_port(), metrics_port=free_port())


@pytest.mark.integration
def test_model_that_fails_to_load_quotes_the_server(tmp_path: Path):
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(BROKEN_CONFIG)
    (model / "1" / "model.py").write_text(BROKEN_MODEL)
    with pytest.raises(TritonError, match="boom: the index file is corrupt"):
        start_server(
            tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
            work_dir=tmp_path / "w", ready_timeout_s=60,
        )  # fmt: skip
