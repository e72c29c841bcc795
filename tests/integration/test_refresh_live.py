"""`megaclass refresh` against a real Triton server under Locust load: a catalogue with classes added and
removed goes live without a failed request and answers for the new classes; a degraded encoder is refused
by the gate and the old version keeps serving; MLflow holds both refreshes and the lineage of the live one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from megaclass.clients.client import Client
from megaclass.export.config import ExportConfig, load_config
from megaclass.export.lifecycle.lineage import lineage
from megaclass.export.lifecycle.refresh import RefreshRequest, run_refresh
from megaclass.export.lifecycle.report import refresh_rows, write_report
from megaclass.export.repository.tiny import (
    EMBEDDING_DIM,
    IMAGE_SIZE,
    build_tiny_repository,
    class_patterns,
    projection_encoder,
    write_tiny_catalog,
)
from megaclass.loadtest.locust_run import LocustSettings, run_locust
from megaclass.python_backend.server.triton_server import free_port, start_server
from megaclass.python_backend.serving.config import ModelServingConfig, ServingConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADDED = tuple(range(1040, 1048))  # classes the new catalogue brings
REMOVED = (1000, 1001, 1002)  # classes it no longer has
LOAD_S = 75  # Locust's run: longer than both refreshes on a busy 2-core machine


def degraded_encoder(path):
    """The tiny encoder with its projection cut to rank 2: most classes collapse together."""
    import torch

    from megaclass.export.convert.onnx_export import export_onnx

    model = projection_encoder(IMAGE_SIZE, EMBEDDING_DIM)
    with torch.no_grad():
        model.proj.weight[2:] = 0
    export_onnx(model, path, ExportConfig(), image_size=IMAGE_SIZE)
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("refresh")
    small = ModelServingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=2000)
    repo, _, _ = build_tiny_repository(root, ServingConfig(encoder=small, retriever=small))
    server = start_server(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), explicit=True,
        models=["encoder", "retriever", "classify"], work_dir=root / "triton",
    )  # fmt: skip
    try:
        yield root, repo, server
    finally:
        server.stop()


def test_refresh_goes_live_under_load_and_the_gate_refuses_a_degraded_encoder(live):
    root, repo, server = live
    cfg = load_config(None, {"work_dir": str(root / "work")})
    catalog = write_tiny_catalog(root / "catalog", 40 + len(ADDED), drop=REMOVED)
    settings = LocustSettings(
        host=f"http://{server.http_url}", grpc_url=server.grpc_url, users=2, spawn_rate=2, run_time_s=LOAD_S,
        user_classes=("TritonGrpcUser", "TritonHttpUser"), batch_mix="1:2,4:1", model_mix="classify:1",
    )  # fmt: skip
    load: dict = {}
    locust = threading.Thread(target=lambda: load.update(result=run_locust(settings, root / "locust", "refresh")))
    locust.start()
    time.sleep(5)
    new_images = class_patterns(40 + len(ADDED), 1, IMAGE_SIZE, seed=7)[0][40:]

    first = run_refresh(cfg, RefreshRequest(catalog, repo, url=server.grpc_url))
    assert first.published, first.results
    assert first.results["diff"]["added"] == list(ADDED) and first.results["diff"]["removed"] == list(REMOVED)
    assert first.results["index"]["mode"] == "incremental"  # enrolled without retraining
    with Client(server.grpc_url, "grpc") as c:
        answer = c.classify(new_images, top_k=5)
    live_version = answer.index_versions[0]
    assert live_version.startswith("2:")
    hits = np.mean([want in got for want, got in zip(ADDED, answer.class_ids.tolist(), strict=True)])
    assert hits >= 0.75, answer.class_ids  # the new classes answer (hit rate@5 of their held-out samples)
    assert not np.isin(answer.class_ids, REMOVED).any()

    second = run_refresh(
        cfg, RefreshRequest(catalog, repo, encoder=degraded_encoder(root / "degraded.onnx"), url=server.grpc_url)
    )
    assert not second.published and second.decision is not None and not second.decision["passed"]
    assert any("precision_at_1" in r for r in second.decision["reasons"]), second.decision
    with Client(server.grpc_url, "grpc") as c:
        assert c.classify(new_images[:2]).index_versions[0] == live_version  # the old version keeps serving
    assert locust.is_alive(), "the refreshes outlasted the load run: raise LOAD_S"
    locust.join()
    result = load["result"]
    assert result.total.failures == 0 and result.measured().failures == 0, result.output_tail
    assert result.measured().requests > 50

    rows = refresh_rows(cfg.tracking, cfg.work_dir)
    assert [r["decision"] for r in rows] == ["passed", "refused"]
    chain = dict(lineage(cfg.tracking, cfg.work_dir, live_version))
    assert list(chain) == ["data", "training run", "encoder", "index", "gate", "published version"]
    assert live_version in chain["published version"] and "alias: serving" in chain["published version"]
    assert first.results["diff"]["catalog_fingerprint"] in chain["data"]
    md = write_report(cfg.tracking, cfg.work_dir, root / "report")
    assert "refused" in md.read_text() and (root / "report" / "metrics.png").stat().st_size > 1000
