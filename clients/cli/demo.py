"""`megaclass demo`: the whole pipeline once, end to end, on a real Triton server.

glyphs from the installed fonts -> triplet-loss CNN encoder -> ONNX (parity checked) ->
class prototypes -> routed FAISS index -> model repository (encoder, retriever, classify)
-> tritonserver -> classify held-out-font glyphs over gRPC and HTTP -> metrics.

Every stage is cached under `work_dir/<stage>/<hash of its inputs>`, so a second run reuses
what did not change. Classes held out of training are enrolled from their samples without
retraining and evaluated separately.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from megaclass.clients.cli.common import Subparsers, add_server_args, serving_overrides
from megaclass.export.config import MegaclassConfig
from megaclass.export.pipeline import DemoArtifacts, build_artifacts, publish_if_changed

console = Console()


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}")


def evaluate_answers(true_ids: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """precision@1 and hit rate@5 (a correct class in the top 5)."""
    return {
        "precision@1": float(np.mean(predicted[:, 0] == true_ids)),
        "hit_rate@5": float(np.mean((predicted[:, :5] == true_ids[:, None]).any(axis=1))),
    }


def run_demo(cfg: MegaclassConfig, keep_serving: bool = False, repository: Path = Path("model_repository")) -> int:
    from megaclass.clients.client import Client
    from megaclass.python_backend.server.triton_server import TritonError, start_server

    t_start = time.perf_counter()
    art, (ds, splits, rows), _ = build_artifacts(cfg)

    _step(5, f"model repository {repository}")
    versions = publish_if_changed(repository, art, cfg)
    console.print(f"published versions: {versions}")

    _step(6, "start Triton (bundled tritonserver, Python backend)")
    s = cfg.serving
    try:
        server = start_server(
            repository, host=s.host, http_port=s.http_port, grpc_port=s.grpc_port, metrics_port=s.metrics_port,
            ready_timeout_s=s.ready_timeout_s, shm_default_byte_size=s.shm_default_byte_size,
        )  # fmt: skip
    except TritonError as exc:
        console.print(f"[red]could not start Triton:[/red] {exc}")
        return 1
    console.print(f"ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url}")
    try:
        _step(7, "classify held-out-font glyphs through the ensemble")
        queries = ds.subset(rows["query"])
        trained = set(np.unique(splits.train.class_index).tolist())
        is_new = np.array([c not in trained for c in queries.class_index])
        true_ids = queries.codepoints[queries.class_index]
        with Client(server.grpc_url, "grpc") as grpc_client, Client(server.http_url, "http") as http_client:
            t0 = time.perf_counter()
            grpc_res = grpc_client.classify(queries.images)
            grpc_s = time.perf_counter() - t0
            n_http = min(256, len(queries.images))
            http_res = http_client.classify(queries.images[:n_http])
        agree = float(np.mean(http_res.class_ids[:, 0] == grpc_res.class_ids[:n_http, 0]))
        console.print(
            f"gRPC: {len(queries.images)} images in {grpc_s:.1f}s ({len(queries.images) / grpc_s:.0f} images/s, "
            f"batches of 64); HTTP: {n_http} images, top-1 identical to gRPC for {agree:.1%}"
        )
        show_predictions(queries, grpc_res, true_ids)
        results = {"seen classes, held-out fonts": evaluate_answers(true_ids[~is_new], grpc_res.class_ids[~is_new])}
        if is_new.any():
            results["new classes (enrolled, never trained)"] = evaluate_answers(
                true_ids[is_new], grpc_res.class_ids[is_new]
            )
        table = Table(title="accuracy on held-out fonts (gRPC answers)")
        table.add_column("split")
        for col in ("queries", "classes", "precision@1", "hit rate@5", "chance"):
            table.add_column(col, justify="right")
        for name, mask in [
            ("seen classes, held-out fonts", ~is_new),
            ("new classes (enrolled, never trained)", is_new),
        ]:
            if name in results:
                m = results[name]
                table.add_row(
                    name, str(mask.sum()), str(len(np.unique(true_ids[mask]))),
                    f"{m['precision@1']:.3f}", f"{m['hit_rate@5']:.3f}", f"{1 / len(ds.codepoints):.4f}",
                )  # fmt: skip
        console.print(table)
        summary = {
            "results": results,
            "seconds": time.perf_counter() - t_start,
            "http_grpc_top1_agreement": agree,
        }
        (Path(cfg.work_dir) / "demo_results.json").write_text(json.dumps(summary, indent=2))
        console.print(f"demo finished in {summary['seconds']:.0f}s")
        if keep_serving:
            print_how_to_call(server, art)
            from megaclass.python_backend.server.__main__ import wait_for_signal

            wait_for_signal()
    finally:
        server.stop()
    return 0


def show_predictions(queries, res, true_ids: np.ndarray, n: int = 6) -> None:
    """A few predictions: true label and the top-5 with scores."""
    rng = np.random.default_rng(0)
    table = Table(title="sample predictions (held-out fonts)")
    table.add_column("true")
    table.add_column("font")
    table.add_column("top-5 (label score)")
    for i in rng.choice(len(true_ids), size=min(n, len(true_ids)), replace=False):
        font = Path(queries.fonts[queries.font_index[i]].split("#")[0]).stem
        top = "  ".join(
            f"{'[green]' if c == true_ids[i] else ''}{lbl} {s:.2f}{'[/green]' if c == true_ids[i] else ''}"
            for c, lbl, s in zip(res.class_ids[i], res.labels[i], res.scores[i], strict=True)
        )
        table.add_row(f"{chr(int(true_ids[i]))} U+{int(true_ids[i]):04X}", font, top)
    console.print(table)


def print_how_to_call(server, art: DemoArtifacts) -> None:
    s = art.image_size
    console.print(
        f"""
[bold]The server keeps serving[/bold] (Ctrl-C stops it).
  Python client:   from megaclass.clients.client import Client
                   Client("{server.grpc_url}", "grpc").classify(["glyph.png"], top_k=5)
  CLI:             .venv/bin/megaclass classify glyph.png --url {server.grpc_url}
  retriever only:  Client("{server.grpc_url}").search(embeddings)   # float32 [N, {art.embedding_dim}]
  perf_analyzer:   .venv/bin/megaclass loadtest perf --model classify --url {server.grpc_url}
                   (or: .venv/bin/perf_analyzer -m classify -u {server.grpc_url} -i grpc --shape IMAGE:1,{s},{s}
                    --concurrency-range 1:64:8, with nvidia-cuda-runtime-cu12's lib/ on LD_LIBRARY_PATH)
  metrics:         curl {server.metrics_url}"""
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from megaclass.export.config import load_config

    overrides: dict = {"serving": serving_overrides(args)}
    if args.max_classes is not None:
        overrides["glyphs"] = {"max_classes": args.max_classes}
    if args.minutes is not None:
        overrides["train"] = {"max_minutes": args.minutes}
    cfg = load_config(args.config, overrides, defaults="demo")
    return run_demo(cfg, keep_serving=args.keep_serving, repository=Path(args.repository))


def register(sub: Subparsers) -> None:
    """`megaclass demo`."""
    p = sub.add_parser("demo", help="glyphs -> train -> ONNX -> index -> Triton -> classify, end to end")
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="leave the server up and print how to call it (default: off, stopped at the end)",
    )
    p.add_argument(
        "--max-classes",
        type=int,
        default=None,
        help="cap the number of glyph classes (default: glyphs.max_classes of the demo preset, 1500)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training time budget, minutes (default: train.max_minutes of the demo preset, 3.0)",
    )
    p.add_argument(
        "--repository",
        default="model_repository",
        help="model repository to write and serve (default: model_repository)",
    )
    add_server_args(p)
    p.set_defaults(func=cmd_demo)
