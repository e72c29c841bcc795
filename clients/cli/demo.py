"""`megaclass demo`: the whole pipeline once, end to end, on a real Triton server.

glyphs from the installed fonts -> triplet-loss CNN encoder -> ONNX (parity checked) ->
class prototypes -> routed FAISS index -> model repository (encoder, retriever, classify)
-> tritonserver -> classify held-out-font glyphs over gRPC and HTTP -> metrics.

Every stage is cached under `work_dir/<stage>/<hash of its inputs>`, so a second run reuses
what did not change. Classes held out of training are enrolled from their samples without
retraining and evaluated separately.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from megaclass.export import artifacts
from megaclass.export.config import MegaclassConfig, config_hash

console = Console()


@dataclass(frozen=True)
class DemoArtifacts:
    onnx_path: Path
    index_dir: Path
    image_size: int
    embedding_dim: int


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}")


def enrolment_split(ds, splits) -> dict[str, np.ndarray]:
    """Rows of the data set used to enrol prototypes and to query.

    Prototypes of trained classes come from the training rows; classes never trained on are
    enrolled from their rows in the training fonts. Queries are all rows in held-out fonts.
    """
    held_fonts = set(splits.held_out_font_names)
    font_is_held = np.array([f in held_fonts for f in ds.fonts])
    return {"enrol": ~font_is_held[ds.font_index], "query": font_is_held[ds.font_index]}


def build_artifacts(cfg: MegaclassConfig) -> tuple[DemoArtifacts, object, dict]:
    """Data -> encoder -> ONNX -> prototypes -> index, each stage cached. Returns data for queries."""
    from megaclass.export.convert.onnx_export import export_onnx
    from megaclass.export.data.glyphs import render_glyph_dataset, split_glyphs
    from megaclass.export.enrol.embedding import embed_images
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.export.train.training import load_encoder, train_encoder
    from megaclass.python_backend.index.routed_index import RoutedIndex

    work = Path(cfg.work_dir)
    _step(1, "glyph data set")
    ds = render_glyph_dataset(cfg.glyphs, work / "glyphs")
    splits = split_glyphs(ds, cfg.glyphs)
    n_classes, n_fonts = len(ds.codepoints), len(ds.fonts)
    console.print(
        f"{len(ds.images)} images, {n_classes} classes, {n_fonts} fonts; training on {len(splits.train.images)} "
        f"images of {len(np.unique(splits.train.class_index))} classes; held-out fonts: "
        f"{', '.join(Path(f.split('#')[0]).name for f in splits.held_out_font_names)}"
    )

    _step(2, f"train the encoder ({cfg.train.loss} loss, {cfg.train.mining} mining)")
    data_key = artifacts.array_fingerprint(splits.train.class_index, splits.train.font_index, ds.codepoints)
    train_dir = artifacts.stage_dir(work, "train", config_hash(cfg.glyphs, cfg.augment, cfg.train, data_key))
    if artifacts.is_done(train_dir):
        console.print(f"reusing the trained encoder in {train_dir}")
        model = load_encoder(train_dir / "checkpoint.pt")
    else:
        from megaclass.export.data.augment import augment_batch

        artifacts.start_stage(train_dir)
        labels = ds.codepoints[splits.train.class_index]
        result = train_encoder(
            splits.train.images, labels, cfg.train, train_dir, augment=lambda x, g: augment_batch(x, cfg.augment, g)
        )
        model = result.model
        artifacts.mark_done(train_dir, {"history": result.history})

    _step(3, "export to ONNX (dynamic batch, parity with PyTorch)")
    ckpt_hash = artifacts.sha256_file(train_dir / "checkpoint.pt")
    export_dir = artifacts.stage_dir(work, "export", config_hash(cfg.export, ckpt_hash))
    onnx_path = export_dir / "encoder.onnx"
    if artifacts.is_done(export_dir):
        report = artifacts.read_done(export_dir)
        console.print(f"reusing {onnx_path}")
    else:
        artifacts.start_stage(export_dir)
        rep = export_onnx(model, onnx_path, cfg.export, image_size=cfg.glyphs.image_size)
        report = {"max_abs_diff": rep.max_abs_diff, "sha256": rep.sha256}
        artifacts.mark_done(export_dir, report)
    console.print(f"ONNX parity max |diff| per batch size: {report['max_abs_diff']}")

    _step(4, "class prototypes and the routed index")
    rows = enrolment_split(ds, splits)
    index_dir = artifacts.stage_dir(work, "index", config_hash(cfg.index, report["sha256"], data_key))
    if artifacts.is_done(index_dir):
        console.print(f"reusing the index in {index_dir}")
        index = RoutedIndex.load(index_dir / "index")
    else:
        artifacts.start_stage(index_dir)
        enrol = ds.subset(rows["enrol"])
        emb = embed_images(model, enrol.images)
        protos, proto_ids = class_prototypes(emb, enrol.codepoints[enrol.class_index], cfg.index.prototypes_per_class)
        labels = {int(c): chr(int(c)) for c in ds.codepoints}
        t0 = time.perf_counter()
        index = RoutedIndex.build(protos, proto_ids, labels, cfg.index)
        index.save(index_dir / "index", extra_manifest={"encoder_sha256": report["sha256"]})
        artifacts.mark_done(index_dir, {"build_s": time.perf_counter() - t0})
    console.print(f"{index.num_classes} classes, {index.num_prototypes} prototypes, dimension {index.dim}")
    dim = index.dim
    return (
        DemoArtifacts(onnx_path, index_dir / "index", cfg.glyphs.image_size, dim),
        (ds, splits, rows),
        report,
    )


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
            from megaclass.clients.cli.main import _wait_for_signal

            _wait_for_signal()
    finally:
        server.stop()
    return 0


def publish_if_changed(repository: Path, art: DemoArtifacts, cfg: MegaclassConfig) -> dict[str, int | str]:
    """Publish a new version only when the artifacts or serving settings changed."""
    from megaclass.export.repository.generate import ModelShapes, build_repository

    key = config_hash(cfg.serving, cfg.export, artifacts.sha256_file(art.onnx_path), str(art.index_dir))
    marker = Path(repository) / ".published.json"
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return {"unchanged": "reusing the published versions"}
    versions = build_repository(
        Path(repository), art.onnx_path, art.index_dir, ModelShapes(art.image_size, art.embedding_dim),
        cfg.serving, cfg.export,
    )  # fmt: skip
    marker.write_text(json.dumps({"key": key, "versions": versions}))
    return versions


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
