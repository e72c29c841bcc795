"""Faults: a broken index version is refused at load with the previous version serving; a
Python-backend stub killed under load is brought back without manual action.

Bounded: traffic for a few seconds per case, recovery waits capped at 30 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import numpy as np
import pytest

from megaclass.export.config import IndexConfig
from megaclass.export.repository.generate import RETRIEVER, model_file, publish_version, remove_version, versions
from megaclass.export.repository.publish import PublishError, load_models
from megaclass.export.repository.serving_pointer import promote, serving_version

from .conftest import MODELS, GoodTraffic, model_input, raw_infer, start_stack, stub_pid

pytestmark = pytest.mark.integration


def served_version(stack) -> str:
    res = raw_infer(stack, "grpc", "classify", [("IMAGE", model_input(stack.images[:1]), "FP32")])
    return res.as_numpy("INDEX_VERSION")[0, 0].decode()


def _truncated(src, dst):
    shutil.copytree(src, dst)
    victim = dst / "classes.npy"
    victim.write_bytes(victim.read_bytes()[:-8])


def _flipped_byte(src, dst):
    shutil.copytree(src, dst)
    victim = dst / "row_class.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the checksum can tell
    victim.write_bytes(bytes(data))


def _wrong_dimension(src, dst):
    from megaclass.python_backend.index.routed_index import RoutedIndex

    rng = np.random.default_rng(0)
    protos = rng.standard_normal((40, 8)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    ids = np.arange(1000, 1040)
    RoutedIndex.build(protos, ids, {int(i): f"c{i}" for i in ids}, IndexConfig(nlist=2, nprobe=2)).save(dst)


BROKEN = {
    "truncated-file": (_truncated, r"classes\.npy: \d+ bytes, manifest says \d+ \(truncated\?\)"),
    "wrong-checksum": (_flipped_byte, r"row_class\.npy: sha256 .* differs from the manifest \(corrupted\)"),
    "wrong-dimension": (_wrong_dimension, r"has dimension 8 but the model's EMBEDDING input \(the encoder's output\) has 16"),
    "missing-index": (None, r"manifest missing"),
}  # fmt: skip


@pytest.fixture(scope="module")
def readiness_restored(stack):
    """After refused versions, Triton's server readiness stays false until a version of the model
    loads; leave the suite's server ready: publish the good index again and load it."""
    yield
    import tritonclient.grpc as grpcclient

    from megaclass.export.repository.publish import publish_index

    _wait_recovered(stack)  # a test may have left the server restarting
    if not grpcclient.InferenceServerClient(stack.server.grpc_url).is_server_ready():
        publish_index(stack.repo, stack.index_dir, promote_it=True)
        load_models(stack.server.grpc_url, [RETRIEVER], admin_key=stack.admin_key, repo=stack.repo)
        _wait_until(grpcclient.InferenceServerClient(stack.server.grpc_url).is_server_ready, timeout_s=20)


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_index_version_is_refused_at_load_and_the_previous_keeps_serving(
    stack, tmp_path, name, readiness_restored
):
    """A broken version put into the repository behind publish's back (publish itself refuses
    these: test_publish_faults.py) fails to load with a clear error; no request fails, the
    previous version answers throughout, and the refused version is moved aside."""
    make, match = BROKEN[name]
    files = {"model.py": model_file(RETRIEVER)}
    if make is not None:
        make(stack.index_dir, tmp_path / "index")
        files["index"] = tmp_path / "index"
    before = served_version(stack)
    traffic = GoodTraffic(stack, max_s=60).start()
    version = publish_version(stack.repo / RETRIEVER, files)
    promote(stack.repo / RETRIEVER, version)
    try:
        t = time.monotonic()
        with pytest.raises(PublishError, match=match) as info:
            load_models(stack.server.grpc_url, [RETRIEVER], admin_key=stack.admin_key, repo=stack.repo)
        message = str(info.value)
        assert f"version {version} is at UNAVAILABLE state" in message
        assert f"version {before.split(':')[0]} of retriever keeps serving" in message
        assert f"moved aside to {stack.repo / RETRIEVER / f'.refused-{version}'}" in message
        assert version not in versions(stack.repo / RETRIEVER)
        assert serving_version(stack.repo / RETRIEVER) == int(before.split(":")[0])  # the pointer went back
        traffic.settle(after=time.monotonic())
        traffic.stop()
        assert traffic.errors == [], traffic.errors[:3]
        assert any(d > t for d in traffic.done)
        assert served_version(stack) == before
    finally:
        traffic.stop()
        remove_version(stack.repo / RETRIEVER, version)
        shutil.rmtree(stack.repo / RETRIEVER / f".refused-{version}", ignore_errors=True)


def test_a_good_version_after_a_refused_one_makes_the_server_ready_again(stack, tmp_path, readiness_restored):
    """Measured Triton 2.51 behaviour: a refused version makes /v2/health/ready say not ready
    (every model still serves and is ready) until a version of that model loads."""
    import tritonclient.grpc as grpcclient

    from megaclass.export.repository.publish import publish_index

    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    _truncated(stack.index_dir, tmp_path / "index")
    refused = publish_version(stack.repo / RETRIEVER, {"model.py": model_file(RETRIEVER), "index": tmp_path / "index"})
    promote(stack.repo / RETRIEVER, refused)
    with pytest.raises(PublishError, match="not ready although every model serves"):
        load_models(stack.server.grpc_url, [RETRIEVER], admin_key=stack.admin_key, repo=stack.repo)
    shutil.rmtree(stack.repo / RETRIEVER / f".refused-{refused}")
    assert not client.is_server_ready()
    assert all(client.is_model_ready(m) for m in MODELS)
    published = publish_index(stack.repo, stack.index_dir, promote_it=True)
    load_models(stack.server.grpc_url, [RETRIEVER], admin_key=stack.admin_key, repo=stack.repo)
    assert served_version(stack).startswith(f"{published.version}:")
    _wait_until(client.is_server_ready, timeout_s=20)  # once the previous version has unloaded


def _wait_recovered(stack, deadline_s: float = 30.0) -> float:
    """Seconds until a classify request succeeds again."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        try:
            raw_infer(stack, "grpc", "classify", [("IMAGE", model_input(stack.images[:1]), "FP32")], timeout_s=5)
            return time.monotonic() - start
        except Exception:
            time.sleep(0.1)
    raise AssertionError(f"not recovered after {deadline_s}s; log:\n{stack.server.log_tail(20)}")


def _wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _triton_alone_after_a_stub_kill(stack, client) -> str:
    """What Triton 2.51 does by itself, 2.5 s after a stub was killed under load: "stays broken"
    (no restart, the model still READY, its requests fail with "not healthy") or, when the stub
    died holding the lock of its shared-memory channel, "server aborted" (boost lock_exception)."""
    time.sleep(2.5)
    if stack.server.is_running():
        try:
            ready = client.is_model_ready("retriever")
        except Exception:
            ready = None
        if ready is not None:
            assert ready
            with pytest.raises(Exception, match=r"Stub process 'retriever_0_0' is not healthy"):
                raw_infer(stack, "grpc", "classify", [("IMAGE", model_input(stack.images[:1]), "FP32")], timeout_s=10)
            return "stays broken"
    time.sleep(0.5)
    assert not stack.server.is_running()
    assert "lock_exception" in stack.server.log_tail(60) or stack.server.process.returncode < 0
    return "server aborted"


def test_killed_stub_under_load_is_brought_back(stack):
    """Triton 2.51 alone does not recover from a killed stub (it stays broken, or it aborts).
    With the watchdog: the model is reloaded (or the server restarted) and serving resumes."""
    import tritonclient.grpc as grpcclient

    watchdog = stack.server.watchdog
    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    traffic = GoodTraffic(stack, max_s=60).start()
    try:
        traffic.settle(after=time.monotonic())
        watchdog.paused.set()
        killed_at = time.monotonic()
        os.kill(stub_pid(stack.server, "retriever"), signal.SIGKILL)
        alone = _triton_alone_after_a_stub_kill(stack, client)
        failed_alone = len(traffic.errors)
        watchdog.paused.clear()
        _wait_recovered(stack)
        resumed = time.monotonic()
        recovered_in = resumed - killed_at
        traffic.settle(after=resumed, count=10)
        late = [e for e, t in zip(traffic.errors, traffic.error_times, strict=True) if t > resumed + 0.5]
        assert late == [], late[:3]
        action = "reload" if alone == "stays broken" else "restart"
        # The server can answer before `restart` returns to the watchdog, which then records the time.
        _wait_until(lambda: any(r.action == action and r.recovered_at for r in watchdog.recoveries), 30)
        print(f"retriever stub killed: Triton alone {alone}, {failed_alone} failed requests in 2.5 s; "
              f"with the watchdog ({action}) serving again {recovered_in:.1f} s after the kill")  # fmt: skip
    finally:
        watchdog.paused.clear()
        traffic.stop()


@pytest.mark.parametrize("model", ["encoder", "retriever"])
def test_killed_stub_recovers_without_manual_action(stack, model):
    """The watchdog running: errors last only until the model is reloaded (about 1 s to detect,
    about 2 s to load), then every request succeeds again."""
    traffic = GoodTraffic(stack, max_s=60).start()
    try:
        traffic.settle(after=time.monotonic())
        os.kill(stub_pid(stack.server, model), signal.SIGKILL)
        recovered = _wait_recovered(stack)
        resumed = time.monotonic()
        traffic.settle(after=resumed, count=10)
        late = [e for e, t in zip(traffic.errors, traffic.error_times, strict=True) if t > resumed + 0.5]
        assert late == [], late[:3]
        assert recovered < 20
        print(f"{model} stub killed under load: {len(traffic.errors)} failed requests, "
              f"serving again {recovered:.1f} s after the kill; {len(traffic.done)} requests in all")  # fmt: skip
    finally:
        traffic.stop()


def test_server_without_model_control_is_restarted(tmp_path):
    """Without explicit model control the watchdog cannot reload a model: it restarts the server
    (seconds of downtime, no manual action); it also restarts a server process that died."""
    s = start_stack(tmp_path, explicit=False, models=MODELS, admin_key=None)
    try:
        recoveries = s.server.watchdog.recoveries
        os.kill(stub_pid(s.server, "encoder"), signal.SIGKILL)
        took = _wait_recovered(s)
        _wait_until(lambda: recoveries and recoveries[-1].recovered_at)
        # ("", ...): the rare case where the stub's death aborted tritonserver itself
        assert [(r.model, r.action, r.error) for r in recoveries] in (
            [("encoder", "restart", None)],
            [("", "restart", None)],
        )
        os.kill(s.server.process.pid, signal.SIGKILL)
        took_server = _wait_recovered(s)
        _wait_until(lambda: len(recoveries) == 2 and recoveries[-1].recovered_at)
        assert [(r.model, r.action, r.error) for r in recoveries][1:] == [("", "restart", None)]
        assert s.server.is_running()
        print(f"no model control: stub kill -> restart, serving after {took:.1f}s; "
              f"server kill -> restart, serving after {took_server:.1f}s")  # fmt: skip
    finally:
        s.server.stop(timeout=10)


def test_an_unpromoted_version_never_goes_live_after_a_stub_kill_or_a_restart(tmp_path):
    """Published without --load (not promoted), a version stays on disk: the watchdog's reload after a
    stub kill and a server restart both load the version the serving pointer names. Promoted, it serves."""
    from megaclass.export.repository.publish import publish_index

    s = start_stack(tmp_path)
    try:
        published = publish_index(s.repo, s.index_dir)
        assert published.version == 2 and serving_version(s.repo / RETRIEVER) == 1
        assert served_version(s).startswith("1:")
        recoveries = s.server.watchdog.recoveries
        os.kill(stub_pid(s.server, RETRIEVER), signal.SIGKILL)
        _wait_until(lambda: recoveries and recoveries[-1].recovered_at, timeout_s=60)
        assert [(r.model, r.action, r.error) for r in recoveries] == [(RETRIEVER, "reload", None)]
        _wait_recovered(s)
        assert served_version(s).startswith("1:")
        s.server.restart(timeout=5)
        assert served_version(s).startswith("1:")
        promote(s.repo / RETRIEVER, published.version)  # asked for: the next start serves it
        s.server.restart(timeout=5)
        assert served_version(s).startswith("2:")
    finally:
        s.server.stop(timeout=5)


def _encoder_failing_on_bright_images(path, image_size: int, dim: int):
    """An ONNX encoder that runs on the zero warm-up image but fails inside ONNX Runtime (Gather index
    out of bounds) on any image with a pixel above 0.1: an internal error, not the client's fault."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.eye(10, dim, dtype=np.float32), "table")
    nodes = [
        helper.make_node("ReduceMax", ["IMAGE"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "hundred"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["index"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["index", "zero_axis"], ["indices"]),
        helper.make_node("Gather", ["table", "indices"], ["row"]),
        helper.make_node("Flatten", ["IMAGE"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "nought"], ["zeros"]),
        helper.make_node("Add", ["zeros", "row"], ["EMBEDDING"]),
    ]
    consts = [
        numpy_helper.from_array(np.array(100.0, np.float32), "hundred"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
        numpy_helper.from_array(np.array(0.0, np.float32), "nought"),
        table,
    ]
    graph = helper.make_graph(
        nodes, "failing", [helper.make_tensor_value_info("IMAGE", TensorProto.FLOAT, ["batch", 1, image_size, image_size])],
        [helper.make_tensor_value_info("EMBEDDING", TensorProto.FLOAT, ["batch", dim])], consts,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_an_internal_error_is_logged_with_its_id_and_not_sent_to_the_client(stack, tmp_path):
    """The client gets a generic message with a request id; the server log has that id with the
    internals (the ONNX Runtime failure), which the response does not."""
    from megaclass.export.repository.generate import ENCODER
    from megaclass.export.repository.publish import publish_encoder, rollback
    from megaclass.export.repository.tiny import EMBEDDING_DIM, IMAGE_SIZE

    bad = _encoder_failing_on_bright_images(tmp_path / "failing.onnx", IMAGE_SIZE, EMBEDDING_DIM)
    publish_encoder(stack.repo, bad, promote_it=True)
    load_models(stack.server.grpc_url, [ENCODER], admin_key=stack.admin_key, repo=stack.repo)
    try:
        with pytest.raises(Exception) as info:
            raw_infer(stack, "grpc", "classify", [("IMAGE", model_input(stack.images[:2]), "FP32")])
        message = str(info.value)
        request_id = re.search(r"encoder: internal error \(request id ([0-9a-f]{16})\)", message).group(1)
        assert "Gather" not in message and "ONNXRuntime" not in message and "Traceback" not in message
        deadline = time.monotonic() + 10
        while request_id not in (log := stack.server.log_path.read_text(errors="replace")):
            assert time.monotonic() < deadline, "the request id never reached the server log"
            time.sleep(0.2)
        logged = log[log.index(request_id) - 200 :][:4000]
        assert "Gather" in logged and "Traceback" in logged
    finally:
        rollback(stack.repo, ENCODER)
        load_models(stack.server.grpc_url, [ENCODER], admin_key=stack.admin_key, repo=stack.repo)
    assert served_version(stack)  # serving again with the previous encoder
