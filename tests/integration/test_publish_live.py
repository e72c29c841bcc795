"""Zero-downtime index updates: publish and load a new retriever version under load."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from megaclass.clients.client import Client
from megaclass.export.config import IndexConfig
from megaclass.export.repository.publish import PublishError, load_models, publish_index, rollback
from megaclass.export.repository.tiny import IMAGE_SIZE, build_tiny_repository, class_patterns
from megaclass.python_backend.server.triton_server import free_port, start_server
from megaclass.python_backend.serving.config import ModelServingConfig, ServingConfig
from megaclass.python_backend.serving.preprocess import to_model_input

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def explicit_stack(tmp_path_factory):
    from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder

    root = tmp_path_factory.mktemp("live")
    small = ModelServingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=2000)
    repo, onnx_path, _ = build_tiny_repository(root, ServingConfig(encoder=small, retriever=small))
    server = start_server(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), explicit=True,
        models=["encoder", "retriever", "classify"], work_dir=root / "triton",
    )  # fmt: skip
    try:
        yield root, repo, server, OnnxEncoder(onnx_path)
    finally:
        server.stop()


def _index_with_extra_classes(root, encoder, extra: int):
    """A new index: the same 40 classes plus `extra` new ones (ids from 5000)."""
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.python_backend.index.routed_index import RoutedIndex

    images, ids = class_patterns(40 + extra, 4, IMAGE_SIZE)
    ids = np.where(ids >= 1040, ids - 1040 + 5000, ids)
    protos, proto_ids = class_prototypes(encoder.embed(to_model_input(images)), ids)
    labels = {int(c): f"class-{int(c)}-{chr(0x4E00 + int(c))}" for c in np.unique(ids)}
    out = root / f"index-{extra}"
    RoutedIndex.build(protos, proto_ids, labels, IndexConfig(nlist=4, nprobe=4)).save(out)
    return out, images[ids >= 5000][:8], ids[ids >= 5000][:8]


def _load_under_traffic(server, images, action, threads: int = 4, after_s: float = 1.5):
    """Run `action` while `threads` clients classify in a loop.

    Returns the errors and the answers as (sent, received, index version, top-1 ids).
    """
    errors, answers, stop = [], [], threading.Event()

    def worker():
        with Client(server.grpc_url, "grpc", retries=0) as c:
            while not stop.is_set():
                try:
                    sent = time.monotonic()
                    r = c.classify(images)
                    answers.append((sent, time.monotonic(), r.index_versions[0], r.class_ids[:, 0].copy()))
                except Exception as exc:  # any failure is a test failure
                    errors.append(repr(exc))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    time.sleep(0.5)
    t_action = time.monotonic()
    action()
    t_done = time.monotonic()
    time.sleep(after_s)
    stop.set()
    for t in pool:
        t.join()
    return errors, answers, t_action, t_done


def test_publish_and_load_under_load_switches_without_errors(explicit_stack):
    root, repo, server, encoder = explicit_stack
    new_index, new_images, new_ids = _index_with_extra_classes(root, encoder, extra=10)
    probe = np.concatenate([new_images[:4], class_patterns(40, 1, IMAGE_SIZE, seed=3)[0][:4]])

    def publish_and_load():
        assert publish_index(repo, new_index, promote_it=True).version == 2
        load_models(server.grpc_url, ["retriever"])

    errors, answers, t_action, t_done = _load_under_traffic(server, probe, publish_and_load)
    assert errors == []
    assert len(answers) > 20
    answers.sort()
    versions = [v.split(":")[0] for _, _, v, _ in answers]
    assert versions[0] == "1" and versions[-1] == "2"
    # once version 2 has answered, every request sent afterwards is answered by version 2
    switched = min(done for _, done, v, _ in answers if v.startswith("2:"))
    assert all(v.startswith("2:") for sent, _, v, _ in answers if sent > switched)
    # version 2 knows the enrolled classes; version 1 never returned them
    for _, _, v, top1 in answers:
        assert (np.isin(top1[:4], new_ids).all()) == (v.startswith("2"))


def test_rollback_returns_to_previous_version(explicit_stack):
    root, repo, server, _ = explicit_stack
    version = rollback(repo, "retriever")
    load_models(server.grpc_url, ["retriever"])
    with Client(server.grpc_url) as c:
        assert c.classify(class_patterns(40, 1, IMAGE_SIZE)[0][:2]).index_versions[0].startswith(f"{version}:")


def test_corrupt_index_is_refused_and_old_version_keeps_serving(explicit_stack, tmp_path):
    root, repo, server, encoder = explicit_stack
    bad, _, _ = _index_with_extra_classes(root, encoder, extra=3)
    victim = next(p for p in sorted(bad.iterdir()) if p.suffix == ".npy")
    victim.write_bytes(victim.read_bytes()[:-8])  # truncated
    with Client(server.grpc_url) as c:
        before = c.classify(class_patterns(40, 1, IMAGE_SIZE)[0][:2]).index_versions[0]
        with pytest.raises(PublishError, match="not publishable"):
            publish_index(repo, bad)
        assert c.classify(class_patterns(40, 1, IMAGE_SIZE)[0][:2]).index_versions[0] == before
