"""`megaclass loadtest ...`, `megaclass report` and `megaclass bench ...` (argparse wiring; the
work is imported lazily)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _perf_input_data(model: str, url: str, protocol: str, out_dir: Path) -> Path:
    """Real inputs for perf_analyzer (its random FP32 data holds NaN/Inf): glyph-like images for
    `classify`/`encoder`, unit vectors for the retriever, shaped from the served model's config."""
    import numpy as np

    from megaclass.clients.client import Client
    from megaclass.loadtest.perf import write_input_data

    with Client(url, protocol, retries=1) as client:
        info = client.model(model)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(8):
        sample = {}
        for name, dims in info.inputs.items():
            if name in ("TOP_K", "THRESHOLD"):
                continue
            x = rng.random(dims).astype(np.float32)
            sample[name] = x / np.linalg.norm(x) if name == "EMBEDDING" else (x > 0.7).astype(np.float32)
        samples.append(sample)
    return write_input_data(out_dir / f"perf_input_{model}.json", samples)


def cmd_perf(args: argparse.Namespace) -> int:
    from megaclass.clients.errors import MegaclassError
    from megaclass.loadtest.perf import PerfAnalyzerError, run_perf, write_csv

    shapes = dict(s.split(":", 1) for s in args.shape)
    shapes = {k: [int(d) for d in v.split(",")] for k, v in shapes.items()}
    rates = [float(r) for r in args.request_rate.split(",")] if args.request_rate else []
    out_dir = Path(args.out).parent if args.out else Path("runs/perf")
    all_points = []
    for model in args.model.split(","):
        for protocol in args.protocol.split(","):
            url = args.url if protocol == "grpc" or not args.http_url else args.http_url
            try:
                data = _perf_input_data(model, url, protocol, out_dir)
                points = run_perf(
                    model,
                    url,
                    protocol=protocol,
                    concurrency=_ints(args.concurrency),
                    request_rates=rates,
                    batch_size=args.batch_size,
                    shapes=shapes,
                    measurement_ms=args.measurement_ms,
                    input_data=data,
                    stability_percent=args.stability_percent,
                )
            except (PerfAnalyzerError, MegaclassError) as exc:
                print(f"megaclass loadtest perf: {exc}", file=sys.stderr)
                return 1
            level = "request/s" if rates else "concurrency"
            print(f"{model} over {protocol}:")
            print(f"{level:>11} {'infer/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
            for p in points:
                print(
                    f"{(p.request_rate if rates else p.concurrency):>11g} {p.throughput:>10.1f} "
                    f"{p.p50_us / 1e3:>8.2f} {p.p95_us / 1e3:>8.2f} {p.p99_us / 1e3:>8.2f}"
                )
            all_points += points
    if args.out:
        write_csv(all_points, Path(args.out))
        print(f"CSV written to {args.out}")
    return 0


def cmd_locust(args: argparse.Namespace) -> int:
    from megaclass.loadtest.locust_run import LocustError, LocustSettings, run_locust, summary_table

    users = {"grpc": ("TritonGrpcUser",), "http": ("TritonHttpUser",), "both": ("TritonGrpcUser", "TritonHttpUser")}
    classes = ("BaselineHttpUser",) if args.baseline else users[args.protocol]
    run_time = args.run_time.rstrip("s")
    try:
        settings = LocustSettings(
            host=args.host,
            grpc_url=args.grpc_url,
            users=args.users,
            spawn_rate=args.spawn_rate,
            run_time_s=float(run_time),
            user_classes=classes,
            **({"batch_mix": args.batch_mix} if args.batch_mix else {}),
            **({"model_mix": args.model_mix} if args.model_mix else {}),
            images=Path(args.images) if args.images else None,
            warmup_s=args.warmup,
        )
        result = run_locust(settings, Path(args.out), args.name)
    except (LocustError, ValueError) as exc:
        print(f"megaclass loadtest locust: {exc}", file=sys.stderr)
        return 1
    print(summary_table(result.stats))
    print(f"rows (images or embeddings) per second: {result.images_per_s:.1f}")
    for kind, path in result.files().items():
        if path.exists():
            print(f"{kind:>9}: {path}")
    return 0 if result.total.failures == 0 else 2


def cmd_report(args: argparse.Namespace) -> int:
    from megaclass.loadtest.report import build_report

    try:
        md, page = build_report(Path(args.out), args.locust, args.perf, title=args.title)
    except (ValueError, FileNotFoundError) as exc:
        print(f"megaclass report: {exc}", file=sys.stderr)
        return 1
    print(f"report written: {md} and {page}")
    return 0


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
    from megaclass.loadtest.benchmarks.serving_bench import load_bench_config

    return load_bench_config(Path(args.bench_config) if args.bench_config else None, overrides)


def cmd_bench_serving(args: argparse.Namespace) -> int:
    from megaclass.loadtest.benchmarks.serving_bench import run_head_to_head, verdict, write_outputs

    overrides: dict = {}
    if args.concurrency:
        overrides["concurrency"] = tuple(_ints(args.concurrency))
    if args.duration is not None:
        overrides["duration_s"] = args.duration
    if args.warmup is not None:
        overrides["warmup_s"] = args.warmup
    if args.targets:
        overrides["targets"] = tuple(args.targets.split(","))
    if args.classes is not None:
        overrides["classes"] = args.classes
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

    from megaclass.loadtest.benchmarks.serving_bench import machine_description, prepare_artifacts, serve_triton
    from megaclass.loadtest.benchmarks.transport_bench import measure_transport, transport_markdown, write_transport_csv
    from megaclass.loadtest.report import update_doc_section

    out = Path(args.out)
    started, machine = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), machine_description()
    batch_sizes = _ints(args.batch_sizes)
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
    write_transport_csv(points, out / "transport.csv")
    print(md)
    if not args.no_docs:
        update_doc_section(Path(args.docs), "client-transport", md)
        print(f"section updated in {args.docs}")
    return 0


def add_bench_commands(bench: argparse._SubParsersAction) -> None:
    """`megaclass bench serving` and `megaclass bench transport`."""

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--bench-config", default=None, help="TOML with [bench] and serving tables "
                       "(default: loadtest/benchmarks/bench_serving.toml)")  # fmt: skip
        p.add_argument("--repository", default=None, help="take encoder.onnx and the index from this repository "
                       "(default: a synthetic encoder and index)")  # fmt: skip
        p.add_argument("--out", default=out, help="where CSVs, Locust reports and plots go")
        p.add_argument("--docs", default="docs/benchmarks.md", help="Markdown file whose section is updated")
        p.add_argument("--no-docs", action="store_true", help="do not touch the docs file")
        p.add_argument("--note", default="", help="a sentence for the write-up (e.g. what else was running)")

    p = bench.add_parser("serving", help="Triton ensemble vs a FastAPI baseline, Locust, concurrency 1-64")
    common(p, "runs/bench-serving")
    p.add_argument("--concurrency", default=None, help="levels, e.g. 1,8,32,64 (default from the config)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per point")
    p.add_argument("--targets", default=None, help="triton-grpc,triton-http,baseline (default: all)")
    p.add_argument("--classes", type=int, default=None, help="synthetic index size")
    p.add_argument("--check", action="store_true", help="exit 3 when the 2x-at-concurrency-32 target is missed")
    p.set_defaults(func=cmd_bench_serving)

    p = bench.add_parser("transport", help="shared-memory transport vs plain gRPC/HTTP, sequential calls")
    common(p, "runs/bench-transport")
    p.add_argument("--url", default=None, help="measure a running server (gRPC address) instead of starting one")
    p.add_argument("--http-url", default=None, help="its HTTP address (with --url)")
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--calls", type=int, default=200, help="timed calls per point")
    p.set_defaults(func=cmd_bench_transport)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `loadtest perf|locust`, `report` and `bench serving|transport` on the top-level subparsers."""
    lt = sub.add_parser("loadtest", help="load tests").add_subparsers(dest="loadtest", required=True)
    p = lt.add_parser("perf", help="perf_analyzer concurrency or request-rate sweeps (CSV)")
    p.add_argument("--model", default="classify", help="model(s), comma-separated: classify,retriever")
    p.add_argument("--url", default="127.0.0.1:8001", help="gRPC address")
    p.add_argument("--http-url", default=None, help="HTTP address (for --protocol http; default: --url)")
    p.add_argument("--protocol", default="grpc", help="grpc, http or grpc,http")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--request-rate", default=None, help="request rates to sweep instead, e.g. 100,200,400")
    p.add_argument("--stability-percent", type=float, default=25.0, help="loosen on a busy machine")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--shape", action="append", default=[], help="NAME:d1,d2,... for inputs with variable dims")
    p.add_argument("--measurement-ms", type=int, default=3000)
    p.add_argument("--out", default=None, help="write the sweep as CSV")
    p.set_defaults(func=cmd_perf)

    p = lt.add_parser("locust", help="bounded headless Locust run (CSV + HTML report)")
    p.add_argument("--host", default="http://127.0.0.1:8000", help="HTTP base URL (Triton or the baseline)")
    p.add_argument("--grpc-url", default="127.0.0.1:8001")
    p.add_argument("--protocol", choices=["grpc", "http", "both"], default="both")
    p.add_argument("--baseline", action="store_true", help="load the FastAPI baseline at --host instead")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--spawn-rate", type=float, default=4.0)
    p.add_argument("--run-time", default="60s", help="seconds, e.g. 60s")
    p.add_argument("--warmup", type=float, default=0.0, help="reset statistics after this many seconds")
    p.add_argument("--batch-mix", default=None, help="batch:weight,... (default: mostly single images)")
    p.add_argument("--model-mix", default=None, help="classify:weight,retriever:weight")
    p.add_argument("--images", default=None, help="uint8 [N, S, S] .npy to send (default: generated)")
    p.add_argument("--out", default="runs/locust")
    p.add_argument("--name", default="locust", help="file prefix of the CSVs and HTML")
    p.set_defaults(func=cmd_locust)

    p = sub.add_parser("report", help="Locust and perf_analyzer CSVs -> Markdown + HTML report with plots")
    p.add_argument("--locust", action="append", default=[], help="Locust CSV prefix (or one of its files)")
    p.add_argument("--perf", action="append", default=[], help="perf_analyzer sweep CSV")
    p.add_argument("--out", default="runs/report")
    p.add_argument("--title", default="megaclass load test report")
    p.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help="benchmarks that write docs/benchmarks.md sections")
    add_bench_commands(bench.add_subparsers(dest="bench", required=True))
