"""`megaclass loadtest perf | locust | soak` and `megaclass report` (argparse wiring; the work is in
`loadtest/`, imported lazily)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megaclass.clients.cli.common import Subparsers, add_perf_analyzer_args, ints


def _perf_input_data(model: str, url: str, protocol: str, out_dir: Path) -> Path:
    """Real inputs for perf_analyzer (its random FP32 data holds NaN/Inf): glyph-like images for
    `classify`/`encoder`, unit vectors for the retriever, shaped from the served model's config."""

    from megaclass.clients.client import Client
    from megaclass.loadtest.perf import write_input_data
    from megaclass.loadtest.saturate import model_inputs

    with Client(url, protocol, retries=1) as client:
        info = client.model(model)
    samples = [{k: v[0] for k, v in model_inputs(info.inputs, 1, seed=i).items()} for i in range(8)]
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
                    concurrency=ints(args.concurrency),
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


def cmd_soak(args: argparse.Namespace) -> int:
    from megaclass.loadtest.soak import cmd_soak as run_soak_command

    return run_soak_command(args)


def _register_perf(lt: Subparsers) -> None:
    p = lt.add_parser("perf", help="perf_analyzer concurrency or request-rate sweeps (CSV)")
    p.add_argument(
        "--model", default="classify", help="model(s), comma-separated: classify,retriever (default: classify)"
    )
    p.add_argument("--url", default="127.0.0.1:8001", help="gRPC address, host:port (default: 127.0.0.1:8001)")
    p.add_argument(
        "--http-url", default=None, help="HTTP address, host:port, for --protocol http (default: none, --url)"
    )
    p.add_argument("--protocol", default="grpc", help="grpc, http or grpc,http (default: grpc)")
    add_perf_analyzer_args(p)
    p.add_argument(
        "--request-rate",
        default=None,
        help="request rates to sweep instead, requests/s, e.g. 100,200,400 (default: none, --concurrency)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="rows per request, images or embeddings (default: 1)")
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        help="NAME:d1,d2,... for inputs with variable dims, repeatable (default: none)",
    )
    p.add_argument("--out", default=None, help="CSV file to write the sweep to (default: none, printed only)")
    p.set_defaults(func=cmd_perf)


def _register_locust(lt: Subparsers) -> None:
    p = lt.add_parser("locust", help="bounded headless Locust run (CSV + HTML report)")
    p.add_argument(
        "--host",
        default="http://127.0.0.1:8000",
        help="HTTP base URL of Triton or the baseline (default: http://127.0.0.1:8000)",
    )
    p.add_argument("--grpc-url", default="127.0.0.1:8001", help="gRPC address, host:port (default: 127.0.0.1:8001)")
    p.add_argument(
        "--protocol", choices=["grpc", "http", "both"], default="both", help="which users to run (default: both)"
    )
    p.add_argument("--baseline", action="store_true", help="load the FastAPI baseline at --host instead (default: off)")
    p.add_argument("--users", type=int, default=16, help="concurrent Locust users (default: 16)")
    p.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second (default: 4.0)")
    p.add_argument("--run-time", default="60s", help="length of the run, seconds, e.g. 60s (default: 60s)")
    p.add_argument(
        "--warmup", type=float, default=0.0, help="reset the statistics after this many seconds (default: 0.0)"
    )
    p.add_argument(
        "--batch-mix",
        default=None,
        help="images per request and weight, batch:weight,... (default: 1:60,2:15,4:12,8:8,16:4,32:1)",
    )
    p.add_argument(
        "--model-mix",
        default=None,
        help="requests per model, classify:weight,retriever:weight (default: classify:4,retriever:1)",
    )
    p.add_argument("--images", default=None, help="uint8 [N, S, S] .npy of images to send (default: none, generated)")
    p.add_argument("--out", default="runs/locust", help="folder for the CSVs and HTML (default: runs/locust)")
    p.add_argument("--name", default="locust", help="file prefix of the CSVs and HTML (default: locust)")
    p.set_defaults(func=cmd_locust)


def _register_soak(lt: Subparsers) -> None:
    p = lt.add_parser("soak", help="steady Locust load with RSS sampled: errors and memory growth")
    p.add_argument("--duration", default="10m", help="length of the run, e.g. 10m, 90s, 1h (default: 10m)")
    p.add_argument(
        "--warmup",
        default=None,
        help="growth is measured after this, e.g. 2m (default: a fifth of --duration, at most 5m)",
    )
    p.add_argument("--users", type=int, default=8, help="Locust users, closed loop, no wait (default: 8)")
    p.add_argument("--sample-every", default="5s", help="RSS sampling period, e.g. 5s (default: 5s)")
    p.add_argument("--repository", default=None, help="serve this model repository (default: none, a synthetic stack)")
    p.add_argument(
        "--classes",
        type=int,
        default=20000,
        help="synthetic index size without --repository, classes (default: 20000)",
    )
    p.add_argument(
        "--out",
        default="runs/soak",
        help="folder for Locust CSVs, soak.json, soak_rss.csv, soak.md (default: runs/soak)",
    )
    p.add_argument("--docs", default=None, help="update the soak section of this Markdown file (default: none)")
    p.add_argument("--note", default="", help="a sentence for the write-up, e.g. what else was running (default: none)")
    p.set_defaults(func=cmd_soak)


def cmd_saturate(args: argparse.Namespace) -> int:
    from megaclass.clients.client import Client
    from megaclass.loadtest.reporting import markdown_table, write_csv
    from megaclass.loadtest.saturate import best_point, model_inputs, saturate

    with Client(args.url, "grpc", retries=1) as client:
        inputs = model_inputs(client.model(args.model).inputs, args.batch)
    points = saturate(args.url, args.model, inputs, ints(args.concurrency), args.seconds, args.warmup, args.processes)
    if args.out:
        write_csv(points, Path(args.out))
    header = ["concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "failures"]
    table = [[str(p.concurrency), f"{p.rps:,.0f}", f"{p.p50_ms:.2f}", f"{p.p95_ms:.2f}", f"{p.p99_ms:.2f}", str(p.failures)]
             for p in points]  # fmt: skip
    print(markdown_table(header, table))
    best = best_point(points, args.p99_limit_ms)
    print(f"best: {best.rps:,.0f} req/s at concurrency {best.concurrency}" if best else "no point without failures")
    return 0 if best else 1


def _register_saturate(lt: Subparsers) -> None:
    p = lt.add_parser("saturate", help="many asyncio gRPC clients on several processes: req/s, exact p50/p95/p99")
    p.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (default: 127.0.0.1:8001)")
    p.add_argument("--model", default="classify", help="model to drive (default: classify)")
    p.add_argument("--batch", type=int, default=1, help="rows per request (default: 1)")
    p.add_argument(
        "--concurrency",
        default="1,8,32,64,128,256,512",
        help="in-flight requests, increasing; stops once req/s stops growing (default: 1,8,32,64,128,256,512)",
    )
    p.add_argument("--processes", type=int, default=4, help="client processes (default: 4)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level (default: 8.0)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default: 2.0)")
    p.add_argument("--p99-limit-ms", type=float, default=None, help="best point must meet this p99 (default: none)")
    p.add_argument("--out", default=None, help="CSV of the points (default: none)")
    p.set_defaults(func=cmd_saturate)


def cmd_sweep(args: argparse.Namespace) -> int:
    from megaclass.export.config import load_config
    from megaclass.loadtest.batching_sweep import SweepGrid, repository_builder, sweep_batching, write_serving_sections
    from megaclass.loadtest.reporting import write_csv
    from megaclass.loadtest.saturate import model_inputs

    cfg = load_config(args.config)
    build, item = repository_builder(Path(args.repository), cfg.export)
    grid = SweepGrid(tuple(ints(args.max_batch_sizes)), tuple(ints(args.queue_delays_us)), tuple(ints(args.instances)))
    inputs = model_inputs({cfg.export.input_name: list(item)})
    chosen, points = sweep_batching(
        build, cfg.serving, grid, Path(args.work), inputs, ints(args.concurrency), args.seconds, args.p99_limit_ms
    )
    write_csv(points, Path(args.work) / "sweep.csv")
    enc = chosen.encoder
    print(
        f"chosen: max batch {enc.max_batch_size}, queue delay {enc.max_queue_delay_us} us, {enc.instances} encoder instances"
    )
    if args.config and args.write:
        write_serving_sections(
            Path(args.config), chosen, note=f"chosen by `megaclass loadtest sweep` ({args.work}/sweep.csv)"
        )
        print(f"written to {args.config}")
    return 0


def _register_sweep(lt: Subparsers) -> None:
    p = lt.add_parser("sweep", help="choose batch size, queue delay and instances by measurement; write them")
    p.add_argument(
        "--repository", required=True, help="a model repository: its newest encoder and index are served (required)"
    )
    p.add_argument("--config", default=None, help="TOML configuration read (and written with --write) (default: none)")
    p.add_argument("--write", action="store_true", help="write the chosen values into --config (default: off)")
    p.add_argument("--max-batch-sizes", default="64,256,1024", help="maximum batch sizes tried (default: 64,256,1024)")
    p.add_argument("--queue-delays-us", default="100,500,2000", help="queue delays tried, us (default: 100,500,2000)")
    p.add_argument("--instances", default="1,2,4", help="encoder instance counts tried (default: 1,2,4)")
    p.add_argument("--concurrency", default="64,256,512", help="load levels per setting (default: 64,256,512)")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per level (default: 4.0)")
    p.add_argument(
        "--p99-limit-ms", type=float, default=None, help="a chosen setting must meet this p99 (default: none)"
    )
    p.add_argument("--work", default="runs/sweep", help="repositories and sweep.csv (default: runs/sweep)")
    p.set_defaults(func=cmd_sweep)


def register(sub: Subparsers) -> None:
    """`megaclass loadtest perf | locust | soak` and `megaclass report`."""
    lt = sub.add_parser("loadtest", help="load tests").add_subparsers(dest="loadtest", required=True)
    _register_perf(lt)
    _register_locust(lt)
    _register_soak(lt)
    _register_saturate(lt)
    _register_sweep(lt)

    p = sub.add_parser("report", help="Locust and perf_analyzer CSVs -> Markdown + HTML report with plots")
    p.add_argument(
        "--locust",
        action="append",
        default=[],
        help="Locust CSV prefix (or one of its files), repeatable (default: none)",
    )
    p.add_argument("--perf", action="append", default=[], help="perf_analyzer sweep CSV, repeatable (default: none)")
    p.add_argument("--out", default="runs/report", help="folder for report.md and its HTML (default: runs/report)")
    p.add_argument(
        "--title",
        default="megaclass load test report",
        help="the report's title (default: megaclass load test report)",
    )
    p.set_defaults(func=cmd_report)
