"""`megaclass bench serving | transport | index | batching`: the benchmarks that print tables, save
plots and update sections of docs/benchmarks.md (argparse wiring; the work is in
`loadtest/benchmarks/`, imported lazily)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from megaclass.clients.cli.common import Subparsers, add_perf_analyzer_args, ints

GLYPH_CACHE = Path(".cache/megaclass/bench")


def _shown_command(name: str) -> str:
    """The command line as run, without --note (its text is shown separately)."""
    args, shown, skip = sys.argv[3:], [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            shown.append(shlex.quote(a))
    return " ".join([name, *shown])


def _bench_setup(args: argparse.Namespace, overrides: dict):
    from megaclass.loadtest.benchmarks.serving_config import load_bench_config

    return load_bench_config(Path(args.bench_config) if args.bench_config else None, overrides)


def cmd_bench_serving(args: argparse.Namespace) -> int:
    from megaclass.loadtest.benchmarks.serving_bench import run_head_to_head, verdict
    from megaclass.loadtest.benchmarks.serving_report import write_outputs

    overrides: dict = {}
    if args.concurrency:
        overrides["concurrency"] = tuple(ints(args.concurrency))
    if args.duration is not None:
        overrides["duration_s"] = args.duration
    if args.warmup is not None:
        overrides["warmup_s"] = args.warmup
    if args.targets:
        overrides["targets"] = tuple(args.targets.split(","))
    if args.classes is not None:
        overrides["classes"] = args.classes
    if args.locust_processes is not None:
        overrides["locust_processes"] = args.locust_processes
    bench, cfg = _bench_setup(args, overrides)
    command = _shown_command("megaclass bench serving")
    run = run_head_to_head(
        Path(args.out), bench, cfg, Path(args.repository) if args.repository else None, note=args.note
    )
    written = write_outputs(run, Path(args.out), None if args.no_docs else Path(args.docs), command)
    ok, why = verdict(run.points)
    print(("target met: " if ok else "target missed: ") + why)
    for kind, path in written.items():
        print(f"{kind:>24}: {path}")
    return 0 if ok or not args.check else 3


def cmd_bench_transport(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    import numpy as np

    from megaclass.loadtest.benchmarks.serving_artifacts import prepare_artifacts
    from megaclass.loadtest.benchmarks.serving_targets import serve_triton
    from megaclass.loadtest.benchmarks.transport_bench import measure_transport, transport_markdown
    from megaclass.loadtest.reporting import machine_description, update_doc_section, write_csv

    out = Path(args.out)
    started, machine = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), machine_description()
    batch_sizes = ints(args.batch_sizes)
    if args.url:  # a running server: images shaped from its classify model
        from megaclass.clients.client import Client

        with Client(args.url) as client:
            dims = next(iter(client.model(client.classify_model).inputs.values()))
        images = (np.random.default_rng(0).random((64, dims[-2], dims[-1])) * 255).astype(np.uint8)
        urls = {"grpc": args.url, **({"http": args.http_url} if args.http_url else {})}
        points = measure_transport(urls, images, batch_sizes, args.calls)
    else:  # the benchmark's own repository, served for the run
        bench, cfg = _bench_setup(args, {})
        art = prepare_artifacts(out / "work", bench, cfg, Path(args.repository) if args.repository else None)
        with serve_triton(art, cfg, out / "work") as endpoint:
            urls = {"grpc": endpoint.grpc, "http": endpoint.http.removeprefix("http://")}
            points = measure_transport(urls, np.load(art.images), batch_sizes, args.calls)
    command = _shown_command("megaclass bench transport")
    md = transport_markdown(points, command, machine + (f". {args.note.rstrip('.')}" if args.note else ""), started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transport.md").write_text(md)
    write_csv(points, out / "transport.csv")
    print(md)
    if not args.no_docs:
        update_doc_section(Path(args.docs), "client-transport", md)
        print(f"section updated in {args.docs}")
    return 0


def cmd_bench_index(args: argparse.Namespace) -> int:
    from megaclass.loadtest.benchmarks.index_bench import bench_index
    from megaclass.loadtest.benchmarks.index_data import glyph_embedding_files
    from megaclass.loadtest.benchmarks.index_methods import HNSW_MS, IVF_SCALES

    files = [Path(f) if f else None for f in (args.prototypes, args.labels, args.queries)]
    name = None
    if args.glyph_encoder:  # the glyph set embedded by a trained encoder: data set (b) of the issue
        from megaclass.export.convert.onnx_export import sha256_file

        encoder = Path(args.glyph_encoder)
        # Embeddings are cached by folder: one folder per encoder, so another encoder never reuses them.
        out = Path(args.glyph_out) if args.glyph_out else GLYPH_CACHE / f"glyph-emb-{sha256_file(encoder)[:12]}"
        files = list(glyph_embedding_files(encoder, out))
        name = "glyphs"  # its docs section: "index-glyphs"
    elif args.text_set:  # 384-d all-MiniLM-L6-v2 embeddings of Debian documentation sentences
        from megaclass.loadtest.benchmarks.text_set import TEXT_CACHE, text_embedding_files

        files = list(text_embedding_files(args.text_set, TEXT_CACHE / f"files-{args.text_set}"))
        name = f"text-{args.text_set}"
    bench_index(
        prototypes=files[0],
        labels=files[1],
        queries=files[2],
        name=name,
        num_classes=args.classes, dim=args.dim, threads=args.threads, target_recall=args.target_recall,
        hnsw_ms=tuple(args.hnsw_m or HNSW_MS), ivf_scales=tuple(args.ivf_scales or IVF_SCALES), doc=Path(args.doc) if args.doc else None,
    )  # fmt: skip
    return 0


def cmd_bench_batching(args: argparse.Namespace) -> int:
    from megaclass.export.config import load_config
    from megaclass.loadtest.benchmarks.batching_bench import run_batching_bench

    cfg = load_config(args.config, defaults="demo")
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    doc = Path(args.doc) if args.doc else None
    run_batching_bench(cfg, Path(args.out), concurrency, args.measurement_ms, doc, args.stability_percent)
    return 0


def _add_head_to_head_args(p: argparse.ArgumentParser, out: str) -> None:
    """What `bench serving` and `bench transport` share: the served stack and where results go."""
    p.add_argument(
        "--bench-config",
        default=None,
        help="TOML with [bench] and serving tables (default: loadtest/benchmarks/bench_serving.toml)",
    )
    p.add_argument(
        "--repository",
        default=None,
        help="take encoder.onnx and the index from this repository (default: a synthetic encoder and index)",
    )
    p.add_argument("--out", default=out, help=f"where CSVs, Locust reports and plots go (default: {out})")
    p.add_argument(
        "--docs",
        default="docs/benchmarks.md",
        help="Markdown file whose section is updated (default: docs/benchmarks.md)",
    )
    p.add_argument("--no-docs", action="store_true", help="do not touch the docs file (default: off, updated)")
    p.add_argument("--note", default="", help="a sentence for the write-up, e.g. what else was running (default: none)")


def _register_serving(bench: Subparsers) -> None:
    p = bench.add_parser("serving", help="Triton ensemble vs a FastAPI baseline, Locust, concurrency 1-64")
    _add_head_to_head_args(p, "runs/bench-serving")
    p.add_argument(
        "--concurrency",
        default=None,
        help="concurrent users per point, comma-separated, e.g. 1,8,32,64 (default: the config's, 1,8,32,64)",
    )
    p.add_argument(
        "--duration", type=float, default=None, help="measured seconds per point (default: the config's, 20)"
    )
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per point (default: the config's, 4)")
    p.add_argument(
        "--targets",
        default=None,
        help="comma-separated among triton-grpc, triton-http, baseline, baseline-tuned, baseline-tuned-workers "
        "(default: the config's, all five)",
    )
    p.add_argument(
        "--locust-processes",
        type=int,
        default=None,
        help="Locust processes sharing the users at each point, capped at the concurrency (default: the config's, 2)",
    )
    p.add_argument(
        "--classes",
        type=int,
        default=None,
        help="synthetic index size, classes (default: the config's, 20000)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when the target (issue #17: c=1 p50 <= 1.3x, c=32 >= 3x the best FastAPI) is missed (default: off, exit 0)",
    )
    p.set_defaults(func=cmd_bench_serving)


def cmd_bench_breakdown(args: argparse.Namespace) -> int:
    from megaclass.loadtest.benchmarks.serving_breakdown import markdown_table, run_breakdown

    rows = run_breakdown(
        Path(args.repository), args.label, Path(args.out), tuple(ints(args.concurrency)), args.measurement_ms
    )
    print(markdown_table(rows))
    return 0


def _register_breakdown(bench: Subparsers) -> None:
    p = bench.add_parser("breakdown", help="where a classify request's time goes in Triton (per-model statistics)")
    p.add_argument("--repository", required=True, help="the Triton model repository to serve (required)")
    p.add_argument("--label", default="run", help="name of this configuration in the table (default: run)")
    p.add_argument("--concurrency", default="1,32", help="comma-separated levels (default: 1,32)")
    p.add_argument(
        "--measurement-ms", type=int, default=4000, help="perf_analyzer window per trial, ms (default: 4000)"
    )
    p.add_argument(
        "--out", default="runs/bench-breakdown", help="where JSON and Markdown go (default: runs/bench-breakdown)"
    )
    p.set_defaults(func=cmd_bench_breakdown)


def _register_transport(bench: Subparsers) -> None:
    p = bench.add_parser("transport", help="shared-memory transport vs plain gRPC/HTTP, sequential calls")
    _add_head_to_head_args(p, "runs/bench-transport")
    p.add_argument(
        "--url",
        default=None,
        help="measure a running server at this gRPC address (default: none, start one for the run)",
    )
    p.add_argument("--http-url", default=None, help="its HTTP address, with --url (default: none, gRPC only)")
    p.add_argument("--batch-sizes", default="1,16,64", help="images per call, comma-separated (default: 1,16,64)")
    p.add_argument("--calls", type=int, default=200, help="timed calls per point (default: 200)")
    p.set_defaults(func=cmd_bench_transport)


def _register_index(bench: Subparsers) -> None:
    p = bench.add_parser("index", help="routed index vs FAISS IVF, HNSW and exact search (table + plot)")
    p.add_argument(
        "--prototypes", default=None, help="P.npy: float32 [N, D] prototypes (default: none, the synthetic set)"
    )
    p.add_argument(
        "--labels", default=None, help="L.txt: a class label per row of P.npy (default: none, the synthetic set)"
    )
    p.add_argument("--queries", default=None, help="Q.npy: float32 [M, D] queries (default: none, the synthetic set)")
    p.add_argument(
        "--glyph-encoder",
        default=None,
        help="an exported encoder (ONNX): benchmark on the glyph set's embeddings (4 prototypes per class; "
        "queries from the held-out fonts) instead of files or the synthetic set (default: none)",
    )
    p.add_argument(
        "--text-set",
        type=int,
        default=None,
        help="benchmark on the 384-d real-text set with this many classes, one sentence each; 4096 held-out "
        "queries; downloads Debian doc packages with apt-get the first time (default: none)",
    )
    p.add_argument(
        "--glyph-out", default=None, help=f"where those files go (default: {GLYPH_CACHE}/glyph-emb-<encoder hash>)"
    )
    p.add_argument(
        "--classes",
        type=int,
        default=1_000_000,
        help="synthetic set size without files, classes (default: 1000000)",
    )
    p.add_argument("--dim", type=int, default=128, help="synthetic set's embedding dimension (default: 128)")
    p.add_argument("--threads", type=int, default=2, help="search threads of every method (default: 2)")
    p.add_argument(
        "--hnsw-m",
        type=int,
        nargs="+",
        default=None,
        help="links per node each HNSW peer (FAISS, USearch, hnswlib) is built with, one build each, "
        "efConstruction 200 (default: 16 32 48)",
    )
    p.add_argument(
        "--ivf-scales",
        type=float,
        nargs="+",
        default=None,
        help="FAISS IVF-Flat cluster counts, as multiples of sqrt(prototypes), one build each (default: 1 2 4 8 16)",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="search recall@10 against exact search each method is tuned to, 0-1 (default: 0.95)",
    )
    p.add_argument(
        "--doc",
        default="docs/benchmarks.md",
        help="Markdown file to update, '' for none (default: docs/benchmarks.md)",
    )
    p.set_defaults(func=cmd_bench_index)


def _register_batching(bench: Subparsers) -> None:
    p = bench.add_parser("batching", help="dynamic batching on vs off: perf_analyzer sweeps of classify, retriever")
    add_perf_analyzer_args(p)
    p.add_argument(
        "--out",
        default=".cache/megaclass/bench/batching",
        help="where CSVs and plots go (default: .cache/megaclass/bench/batching)",
    )
    p.add_argument(
        "--doc",
        default="docs/benchmarks.md",
        help="Markdown file to update, '' for none (default: docs/benchmarks.md)",
    )
    p.set_defaults(func=cmd_bench_batching)


def register(sub: Subparsers) -> None:
    """`megaclass bench` and its benchmarks."""
    bench = sub.add_parser("bench", help="benchmarks that write docs/benchmarks.md sections").add_subparsers(
        dest="bench", required=True
    )
    _register_serving(bench)
    _register_transport(bench)
    _register_breakdown(bench)
    _register_index(bench)
    _register_batching(bench)
