"""The tritonserver launcher: locating the wheel's pieces and clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from megaclass.python_backend.server.triton_server import (
    TritonError,
    free_port,
    locate_triton,
    server_environment,
    start_server,
)

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("boom: the index file is corrupt")

    def execute(self, requests):
        return []
"""

ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
            for r in requests
        ]
"""

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


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_admin_key_guards_model_control_but_not_inference(tmp_path: Path, protocol):
    """With an admin key, load/unload need the header; health and inference do not."""
    from tritonclient.utils import InferenceServerException

    from megaclass.python_backend.server.triton_server import ADMIN_HEADER, admin_headers

    model = tmp_path / "repo" / "echo"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(BROKEN_CONFIG.replace('"broken"', '"echo"'))
    (model / "1" / "model.py").write_text(ECHO_MODEL)
    server = start_server(
        tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        work_dir=tmp_path / "w", explicit=True, models=["echo"], admin_key="s3cret",
    )  # fmt: skip
    try:
        if protocol == "grpc":
            import tritonclient.grpc as tc

            client = tc.InferenceServerClient(server.grpc_url)
        else:
            import tritonclient.http as tc

            client = tc.InferenceServerClient(server.http_url)
        x = tc.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        assert client.infer("echo", [x]).as_numpy("Y").tolist() == [[1.0, 1.0]]
        with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
            client.unload_model("echo")
        with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
            client.load_model("echo", headers=admin_headers("wrong", protocol))
        assert client.is_model_ready("echo")
        client.load_model("echo", headers=admin_headers("s3cret", protocol))
        assert client.is_model_ready("echo")
        client.close()  # an open HTTP connection holds the server's shutdown for its exit timeout
    finally:
        server.stop()
