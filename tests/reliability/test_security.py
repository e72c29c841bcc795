"""Security: loopback by default, model control behind a key, no untrusted pickle, and request
data that never becomes a file-system path."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from megaclass.python_backend.server.triton_server import ADMIN_HEADER, admin_headers

from .conftest import client_module, model_input, raw_infer

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ["export", "python_backend", "clients", "loadtest"]
PROTOCOLS = ["grpc", "http"]


def _sources() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


# --- binding --------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_server_binds_only_to_loopback_by_default(stack):
    import psutil

    from megaclass.export.config import ServingConfig

    assert ServingConfig().host == "127.0.0.1"
    for flag in ("--http-address=", "--grpc-address=", "--metrics-address="):
        assert f"{flag}127.0.0.1" in stack.server.command
    listening = [c for c in psutil.Process(stack.server.process.pid).net_connections("inet") if c.status == "LISTEN"]
    ports = {c.laddr.port for c in listening}
    assert {stack.server.http_port, stack.server.grpc_port, stack.server.metrics_port} <= ports
    assert all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in listening), listening


@pytest.mark.integration
def test_not_reachable_from_another_address(stack):
    """Connecting to the server's ports through this machine's non-loopback address is refused."""
    import psutil

    addresses = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    for port in (stack.server.http_port, stack.server.grpc_port, stack.server.metrics_port):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addresses[0], port)) != 0, f"port {port} answers on {addresses[0]}"


def test_exposing_is_an_explicit_option():
    from megaclass.clients.cli.main import build_parser

    assert build_parser().parse_args(["serve"]).host is None  # None: the configuration's 127.0.0.1
    assert build_parser().parse_args(["serve", "--host", "0.0.0.0"]).host == "0.0.0.0"


def test_exposed_explicit_mode_without_a_key_is_refused(tmp_path):
    """`megaclass serve --host 0.0.0.0 --explicit` with no key exits non-zero, saying why; --insecure overrides."""
    import subprocess
    import sys

    from megaclass.python_backend.server.security import scrub_environment

    cmd = [sys.executable, "-m", "megaclass.clients.cli.main", "serve", "--host", "0.0.0.0", "--explicit"]
    cmd += ["--repository", str(tmp_path / "no-repo")]
    env = scrub_environment(os.environ)
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode != 0
    assert "refusing to serve explicit model control on 0.0.0.0 without an admin key" in refused.stderr
    assert "--insecure" in refused.stderr
    insecure = subprocess.run(cmd + ["--insecure"], capture_output=True, text=True, env=env, timeout=120)
    assert insecure.returncode != 0 and "refusing" not in insecure.stderr  # past the check: no repository
    assert "does not exist" in insecure.stderr


def test_the_admin_key_is_never_a_command_line_argument(tmp_path):
    from megaclass.clients.cli.main import build_parser
    from megaclass.python_backend.server.security import SecurityError, resolve_admin_key

    for argv in (["publish", "--index", "x"], ["rollback"], ["serve"]):
        args = vars(build_parser().parse_args(argv))
        assert "admin_key" not in args and "admin_key_file" in args  # a path to read, never the key
    key_file = tmp_path / "admin.key"
    key_file.write_text("from-a-file\n")
    assert resolve_admin_key(key_file, environ={"MEGACLASS_ADMIN_KEY": "from-env"}) == "from-a-file"
    assert resolve_admin_key(None, environ={"MEGACLASS_ADMIN_KEY_FILE": str(key_file)}) == "from-a-file"
    assert resolve_admin_key(None, environ={"MEGACLASS_ADMIN_KEY": "from-env"}) == "from-env"
    assert resolve_admin_key(None, environ={}) is None
    with pytest.raises(SecurityError, match="cannot read the admin key file"):
        resolve_admin_key(tmp_path / "missing", environ={})


@pytest.mark.integration
def test_the_key_is_in_no_command_line_and_no_stub_environment(stack, monkeypatch):
    """Read from /proc: tritonserver's command line shows a placeholder, and neither it nor any of its
    Python-backend stubs has the key (or its variable) in its command line or environment, while the
    restricted API still takes the key (test_restricted_api_works_with_the_key)."""
    import psutil

    from megaclass.python_backend.server.security import KEY_PLACEHOLDER

    key = stack.admin_key.encode()
    server = psutil.Process(stack.server.process.pid)
    stubs = [c for c in server.children() if c.status() != psutil.STATUS_ZOMBIE]
    assert len(stubs) >= 3  # encoder, retriever, decode
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert KEY_PLACEHOLDER.encode() in cmdline and key not in cmdline
    for proc in [server, *stubs]:
        for what in ("cmdline", "environ"):
            data = Path(f"/proc/{proc.pid}/{what}").read_bytes()
            assert key not in data, f"the admin key is in /proc/{proc.pid}/{what} ({proc.name()})"
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert b"MEGACLASS_ADMIN_KEY=" not in environ and b"MEGACLASS_ADMIN_KEY_FILE=" not in environ
        if proc is not server:
            assert b"secret_args" not in Path(f"/proc/{proc.pid}/environ").read_bytes()  # not preloaded
    assert stack.admin_key not in " ".join(stack.server.command) and stack.admin_key not in str(stack.server)


@pytest.mark.integration
def test_exposed_with_a_key_an_upload_without_it_is_refused(tmp_path):
    """Bound to 0.0.0.0 in explicit mode: `start_server` refuses without a key; with one, a load that
    uploads a model.py is refused without the key (and the code does not run), while inference is open."""
    import tritonclient.http as httpclient

    from megaclass.export.repository.tiny import build_tiny_repository
    from megaclass.python_backend.server.triton_server import TritonError, free_port, start_server

    from .conftest import MODELS, serving_config

    repo, _, _ = build_tiny_repository(tmp_path, serving_config())
    ports = dict(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with pytest.raises(TritonError, match="refusing to serve explicit model control on 0.0.0.0"):
        start_server(repo, host="0.0.0.0", explicit=True, models=MODELS, work_dir=tmp_path / "t", **ports)
    server = start_server(
        repo, host="0.0.0.0", explicit=True, models=MODELS, work_dir=tmp_path / "t", admin_key="exposed-key", **ports
    )
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
            RESTRICTED_CALLS["load with files"](client, None)
        assert not Path("/tmp/megaclass-pwned").exists() and client.is_model_ready("classify")
        assert client.get_model_repository_index(headers=admin_headers("exposed-key", "http"))
        client.close()
    finally:
        server.stop(timeout=10)


# --- restricted model control ------------------------------------------------------------------------------


def _client(stack, protocol):
    return client_module(protocol).InferenceServerClient(stack.url(protocol))


RESTRICTED_CALLS = {
    "load": lambda c, h: c.load_model("retriever", headers=h),
    "unload": lambda c, h: c.unload_model("decode", headers=h),
    "repository index": lambda c, h: c.get_model_repository_index(headers=h),
    "trace settings": lambda c, h: c.get_trace_settings(headers=h),
    "update trace": lambda c, h: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, headers=h),
    "log settings": lambda c, h: c.get_log_settings(headers=h),
    "update log": lambda c, h: c.update_log_settings(settings={"log_verbose_level": 1}, headers=h),
    # a load with files: what would let a client write a model (code) of its own into the server
    "load with files": lambda c, h: c.load_model(
        "intruder",
        config=json.dumps({"backend": "python", "max_batch_size": 0, "input": [], "output": []}),
        files={"file:1/model.py": b"import os\nos.system('touch /tmp/megaclass-pwned')\n"},
        headers=h,
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("call", list(RESTRICTED_CALLS))
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_restricted_api_refused_without_the_key(stack, protocol, call, key):
    headers = admin_headers(key, protocol) if key else None
    with pytest.raises(InferenceServerException, match=ADMIN_HEADER):
        RESTRICTED_CALLS[call](_client(stack, protocol), headers)
    assert _client(stack, protocol).is_model_ready("decode")
    assert not Path("/tmp/megaclass-pwned").exists()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_restricted_api_works_with_the_key(stack, protocol):
    client, headers = _client(stack, protocol), admin_headers(stack.admin_key, protocol)
    index = client.get_model_repository_index(headers=headers)
    names = {m["name"] for m in index} if protocol == "http" else {m.name for m in index.models}
    assert {"classify", "retriever", "encoder"} <= names
    client.get_log_settings(headers=headers)
    client.load_model("retriever", headers=headers)  # files unchanged: a no-op reload
    assert client.is_model_ready("retriever")


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_what_a_classifying_client_needs_is_open(stack, protocol):
    client = _client(stack, protocol)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("classify")
    assert client.get_model_metadata("classify") and client.get_model_config("classify")
    assert client.get_inference_statistics("classify")
    res = raw_infer(stack, protocol, "classify", [("IMAGE", model_input(stack.images[:2]), "FP32")])
    assert res.as_numpy("CLASS_IDS").shape == (2, 5)


# --- no untrusted pickle -------------------------------------------------------------------------------


def _calls(tree: ast.AST, dotted: str):
    """Call nodes whose function is written `dotted` (e.g. "torch.load")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            yield node


def _kw(call: ast.Call, name: str):
    return next((ast.literal_eval(k.value) for k in call.keywords if k.arg == name), "absent")


def test_every_torch_load_is_weights_only():
    found = []
    for path in _sources():
        for call in _calls(ast.parse(path.read_text()), "torch.load"):
            found.append(path.name)
            assert _kw(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load without weights_only=True"
    assert found, "expected the training code to load checkpoints"


def test_no_pickle_in_the_package():
    """No pickle module, and no np.load that allows pickle (numpy >= 1.16.3 refuses object
    arrays by default; the index and data-set readers also say allow_pickle=False)."""
    for path in _sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad = [m for m in mods if m.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle")]
                assert not bad, f"{path}:{node.lineno}: imports {bad}"
        for call in _calls(tree, "np.load"):
            assert _kw(call, "allow_pickle") in (False, "absent"), f"{path}:{call.lineno}: np.load allows pickle"
        for name in ("pd.read_pickle", "yaml.load", "torch.jit.load"):
            assert not list(_calls(tree, name)), f"{path}: {name}"


class _Payload:
    """Unpickling this runs code: it creates the file named by `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_checkpoint_is_refused(tmp_path):
    import torch

    from megaclass.python_backend.serving.encoder_model import load_encoder

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"[Ww]eights.only|Unsupported global|weights_only"):
        load_encoder(tmp_path / "evil.pt")
    assert not marker.exists()


def _rewrite_manifest_entry(index_dir: Path, name: str) -> None:
    """Make the manifest agree with a replaced file (an attacker who controls the whole directory)."""
    from megaclass.python_backend.index.persistence import sha256_file

    manifest_path = index_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    path = index_dir / name
    manifest["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.integration
def test_a_pickled_array_in_an_index_is_refused(stack, tmp_path):
    from megaclass.python_backend.index.persistence import IndexIntegrityError
    from megaclass.python_backend.index.routed_index import RoutedIndex

    index = tmp_path / "index"
    shutil.copytree(stack.index_dir, index)
    marker = tmp_path / "pwned"
    np.save(index / "classes.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    _rewrite_manifest_entry(index, "classes.npy")
    with pytest.raises(IndexIntegrityError, match=r"classes\.npy: unreadable array: .*allow_pickle"):
        RoutedIndex.load(index)
    assert not marker.exists()


def test_a_pickled_array_in_a_glyph_data_set_is_refused(tmp_path):
    from megaclass.export.data import glyphs

    marker = tmp_path / "pwned"
    np.savez(tmp_path / "g.npz", images=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        glyphs._load(tmp_path / "g.npz")
    assert not marker.exists()


# --- request data never becomes a path -----------------------------------------------------------------

FS_NAMES = {"open", "Path", "os.open", "os.remove", "os.unlink", "os.listdir", "os.scandir", "shutil.copy",
            "shutil.copytree", "shutil.rmtree", "np.load", "np.fromfile", "io.open", "Image.open"}  # fmt: skip
REQUEST_MODULES = ["request_batching.py", "retriever_service.py", "image_decoding.py"]


def test_request_handling_code_never_touches_the_file_system():
    """The request path (each model's `execute`, and the library it calls) uses no file-system
    API; the one image opener reads from an in-memory buffer."""
    checked = 0
    for model in sorted((ROOT / "python_backend" / "models").glob("*/model.py")):
        tree = ast.parse(model.read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name != "initialize"):
                used = {ast.unparse(c.func) for c in ast.walk(fn) if isinstance(c, ast.Call)}
                assert not used & FS_NAMES, f"{model.parent.name}.{fn.name} calls {used & FS_NAMES}"
                checked += 1
    for name in REQUEST_MODULES:
        tree = ast.parse((ROOT / "python_backend" / "serving" / name).read_text())
        for call in (c for c in ast.walk(tree) if isinstance(c, ast.Call)):
            func = ast.unparse(call.func)
            if func == "Image.open":
                assert ast.unparse(call.args[0]).startswith("io.BytesIO("), f"{name}:{call.lineno}"
            else:
                assert func not in FS_NAMES, f"{name}:{call.lineno} calls {func}"
    assert checked >= 3


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_paths_in_requests_are_data(stack, protocol, tmp_path):
    """Paths sent as parameters, encoded-image bytes or model names are refused as what they are."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really")
    images = [("IMAGE", model_input(stack.images[:1]), "FP32")]
    for params in ({"top_k": str(secret)}, {"threshold": "/etc/passwd"}, {"top_k": "../../etc/shadow"}):
        with pytest.raises(InferenceServerException, match=r"must be (an integer|a number)"):
            raw_infer(stack, protocol, "classify", images, parameters=params)
    # ignored parameters: the index is the one loaded from the repository, whatever a request says
    res = raw_infer(
        stack, protocol, "classify", images, parameters={"index_dir": str(tmp_path), "model_repository": "/"}
    )
    assert res.as_numpy("CLASS_IDS").shape == (1, 5)
    for data in (str(secret).encode(), f"file://{secret}".encode(), b"../../../../etc/passwd"):
        encoded = np.array([[data]], dtype=object)
        with pytest.raises(InferenceServerException, match=r"IMAGE_BYTES\[0\] is not a PNG or JPEG image"):
            raw_infer(stack, protocol, "classify_encoded", [("IMAGE_BYTES", encoded, "BYTES")])
    for model in ("../retriever", "retriever/../../etc", "%2e%2e%2fretriever"):
        with pytest.raises(InferenceServerException) as info:
            raw_infer(stack, protocol, model, [("EMBEDDING", np.zeros((1, 16), np.float32), "FP32")])
        assert str(info.value.status()) in ("StatusCode.NOT_FOUND", "404", "400"), info.value.message()
    assert os.path.exists(secret)
