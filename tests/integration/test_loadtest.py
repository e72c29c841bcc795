"""Load tests against the real server: a short bounded Locust run, its report, the baseline service."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from megaclass.loadtest.locust_run import LocustSettings, run_locust
from megaclass.loadtest.report import build_report

pytestmark = pytest.mark.integration


def test_short_locust_run_has_no_failures_and_a_sane_count(tiny_stack, tmp_path):
    """Four users (gRPC and HTTP), a mix of batch sizes and both models, for three seconds."""
    settings = LocustSettings(
        host=f"http://{tiny_stack.server.http_url}",
        grpc_url=tiny_stack.server.grpc_url,
        users=4,
        spawn_rate=4,
        run_time_s=3,
        user_classes=("TritonGrpcUser", "TritonHttpUser"),
        batch_mix="1:4,4:2,16:1",  # 16 = the tiny stack's max batch
        model_mix="classify:3,retriever:1",
    )
    result = run_locust(settings, tmp_path, "smoke")
    total, measured = result.total, result.measured()
    assert result.returncode == 0, result.output_tail
    assert total.failures == 0 and measured.failures == 0
    assert 20 <= measured.requests <= 3 * 5000, measured  # 4 users for ~3 s: at least a few each
    assert 2 <= measured.seconds <= 4 and measured.rows_per_s >= measured.rps
    assert total.requests <= measured.requests  # Locust's CSV is a snapshot taken up to a second early
    types = {s.type for s in result.stats if s.name != "Aggregated"}
    assert types == {"grpc", "POST"}
    names = {s.name for s in result.stats}
    assert any(n.startswith("classify b=") for n in names) and any(n.startswith("retriever b=") for n in names)
    assert result.images_per_s >= total.rps
    for path in result.files().values():
        assert path.exists(), path

    md, page = build_report(tmp_path / "report", locust=[result.prefix])
    text = md.read_text()
    assert "Locust" in text and "classify b=1" in text and "locust_over_time.png" in text
    assert (tmp_path / "report" / "plots" / "locust_over_time.png").stat().st_size > 1000
    assert "<table>" in page.read_text()


def test_baseline_service_answers_like_triton(tiny_stack, tmp_path):
    """The FastAPI baseline on the same encoder and index gives the same classes, and Locust loads it."""
    from megaclass.loadtest.benchmarks.serving_artifacts import BenchArtifacts
    from megaclass.loadtest.benchmarks.serving_artifacts import newest_version_file as newest
    from megaclass.loadtest.benchmarks.serving_config import HeadToHeadConfig
    from megaclass.loadtest.benchmarks.serving_targets import serve_baseline

    onnx = newest(tiny_stack.repo / "encoder", "encoder.onnx")
    index = newest(tiny_stack.repo / "retriever", "index")
    art = BenchArtifacts(onnx, index, tiny_stack.repo, tmp_path / "none.npy", 16, 16, 40, "tiny stack")
    images = tiny_stack.images[:6]
    body = (images.astype(np.float32) / 255)[:, None].tobytes()
    with serve_baseline(art, HeadToHeadConfig(), tmp_path, threads=1) as endpoint:
        req = urllib.request.Request(f"{endpoint.http}/classify?n=6&top_k=3", data=body, method="POST")
        got = json.loads(urllib.request.urlopen(req, timeout=10).read())
        bad = urllib.request.Request(f"{endpoint.http}/classify?n=7", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=10)
        assert info.value.code == 400 and "float32" in info.value.read().decode()
        result = run_locust(
            LocustSettings(
                host=endpoint.http, users=2, spawn_rate=2, run_time_s=2, user_classes=("BaselineHttpUser",),
                batch_mix="1:3,4:1",
            ),
            tmp_path,
            "baseline",
        )  # fmt: skip
    want = tiny_stack.index.search(tiny_stack.encoder.embed(images[:, None].astype(np.float32) / 255), top_k=3)
    assert got["class_ids"] == want.class_ids.tolist()
    assert result.total.failures == 0 and result.measured().requests >= 10


def test_cli_locust_then_report_and_a_request_rate_sweep(tiny_stack, tmp_path, capsys):
    from megaclass.clients.cli.main import main

    code = main([
        "loadtest", "locust", "--host", f"http://{tiny_stack.server.http_url}",
        "--grpc-url", tiny_stack.server.grpc_url, "--users", "2", "--spawn-rate", "2", "--run-time", "2s",
        "--batch-mix", "1:3,8:1", "--out", str(tmp_path / "lt"), "--name", "cli",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert (tmp_path / "lt" / "cli.html").exists()
    perf_csv = tmp_path / "rate.csv"
    code = main([
        "loadtest", "perf", "--url", tiny_stack.server.grpc_url, "--request-rate", "40",
        "--measurement-ms", "1000", "--stability-percent", "500", "--out", str(perf_csv),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert (
        main(
            ["report", "--locust", str(tmp_path / "lt" / "cli"), "--perf", str(perf_csv), "--out", str(tmp_path / "r")]
        )
        == 0
    )
    text = (tmp_path / "r" / "report.md").read_text()
    assert "### cli" in text and "perf_analyzer" in text and "| classify grpc b=1 | 0 | 40 |" in text


def test_closed_loop_generator_counts_answers_and_errors(tiny_stack):
    """`closed_loop.py` (the generator for machines without perf_analyzer or Locust): real answers are
    counted and timed; a request the server refuses is counted as a failure with its message."""
    from megaclass.loadtest.closed_loop import run_closed_loop

    image = np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)
    ok = run_closed_loop(tiny_stack.server.grpc_url, "classify", {"IMAGE": image}, 3, duration_s=1.5, warmup_s=0.5, processes=2)  # fmt: skip
    assert ok.failures == 0 and ok.requests > 10
    assert ok.rows_per_s == pytest.approx(2 * ok.rps) and 0 < ok.p50_ms <= ok.p99_ms
    wrong = np.zeros((1, 1, 8, 8), np.float32)  # the wrong image size
    bad = run_closed_loop(tiny_stack.server.grpc_url, "classify", {"IMAGE": wrong}, 1, duration_s=0.5, warmup_s=0.1, processes=1)  # fmt: skip
    assert bad.requests == 0 and bad.failures > 0 and "IMAGE" in bad.first_error


def test_saturate_drives_the_server_from_several_processes(tiny_stack, tmp_path, capsys):
    """`megaclass loadtest saturate`: asyncio gRPC clients on two processes, exact merged percentiles."""
    from megaclass.clients.cli.main import main
    from megaclass.loadtest.saturate import best_point, model_inputs, run_saturating

    url = tiny_stack.server.grpc_url
    inputs = model_inputs({"IMAGE": [1, tiny_stack.images.shape[1], tiny_stack.images.shape[2]]})
    p = run_saturating(url, "classify", inputs, concurrency=6, duration_s=2, warmup_s=0.5, processes=2)
    assert p.failures == 0 and p.first_error == "", p
    assert 20 <= p.requests and p.rps == pytest.approx(p.requests / 2)
    assert 0 < p.p50_ms <= p.p95_ms <= p.p99_ms < 2000
    bad = run_saturating(url, "no_such_model", inputs, concurrency=2, duration_s=1, warmup_s=0, processes=1)
    assert bad.requests == 0 and bad.failures > 0 and "no_such_model" in bad.first_error
    assert best_point([bad]) is None

    out = tmp_path / "points.csv"
    argv = ["loadtest", "saturate", "--url", url, "--model", "retriever", "--concurrency", "2,4",
            "--processes", "2", "--seconds", "1", "--warmup", "0.5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best:" in printed and "req/s at concurrency" in printed
    assert out.read_text().splitlines()[0].startswith("concurrency,requests,failures,rps")


def test_sweep_serves_each_setting_and_writes_the_chosen_one(tiny_stack, tmp_path, capsys):
    """`megaclass loadtest sweep` on the tiny repository: two settings, the better one in the config file."""
    from megaclass.clients.cli.main import main
    from megaclass.export.config import load_config

    config = tmp_path / "megaclass.toml"
    config.write_text("[train]\nepochs = 2\n")
    argv = ["loadtest", "sweep", "--repository", str(tiny_stack.repo), "--config", str(config), "--write",
            "--max-batch-sizes", "4,16", "--queue-delays-us", "500", "--instances", "1", "--concurrency", "8",
            "--seconds", "1", "--work", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    assert "chosen: max batch" in capsys.readouterr().out
    rows = (tmp_path / "work" / "sweep.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("max_batch_size,max_queue_delay_us")
    assert all(",0" == r[r.rindex(",") :] for r in rows[1:])  # no failures
    cfg = load_config(config)
    assert cfg.train.epochs == 2 and cfg.serving.encoder.max_batch_size in (4, 16)
