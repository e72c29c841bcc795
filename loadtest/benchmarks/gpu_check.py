"""What a lent GPU machine checks and times in one call (`scripts/gpu_check.sh` runs this).

1. Retrieval (gpu_retrieval_bench.py): at 100k / 1M / 4M classes x 128, exact search on the GPU, the
   routed index scanned on the GPU, the retriever as served (exact or routed, chosen by the memory
   budget) and the routed FAISS scan on the host's CPU cores: recall@10 and QPS at batches 1/64/1024.
2. Serving (gpu_serving_bench.py): the `gpu-torch` repository over the 1M index on the pytriton
   wheel's tritonserver; the batching sweep, then the chosen setting saturated by asyncio gRPC clients
   on several processes, and the retriever's share of server compute time.

Results in `--out`: gpu_check.json, gpu_check.md (the docs/benchmarks.md section), megaclass-gpu.toml
(the sweep's chosen values) and benchmarks.md (docs/benchmarks.md with the section replaced).
Usage: python -m megaclass.loadtest.benchmarks.gpu_check --out DIR [--sizes N,...] [--skip retrieval,serving]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from megaclass.loadtest.benchmarks.gpu_retrieval_bench import log, retrieval_markdown, retrieval_table
from megaclass.loadtest.benchmarks.gpu_serving_bench import serving_markdown, serving_on_gpu
from megaclass.python_backend.serving.thread_budget import usable_cores

SECTION = "gpu-path"


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no GPU (dry run on the CPU)"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"


def markdown(report: dict[str, Any]) -> str:
    """The docs/benchmarks.md section."""
    lines = [
        "## GPU path: retrieval chosen by size, saturated serving",
        "",
        f"Device: **{report['device']}**; host CPU: {report['cpu']}. Measured {report['date']} by one call of "
        f"`bash scripts/gpu_check.sh {report['args']}`.",
        "",
    ]
    if report.get("retrieval"):
        lines += ["### Retrieval", "", *retrieval_markdown(report["retrieval"], report["budget_mb"]), ""]
    if report.get("serving"):
        lines += ["### Serving `classify` (one 32x32 image per request, gpu-torch target)", ""]
        lines += [*serving_markdown(report["serving"]), ""]
    for part in ("retrieval_error", "serving_error"):
        if part in report:
            lines += [f"{part.replace('_', ' ')}:", "", "```", report[part][-1500:], "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/megaclass-gpu-check")
    ap.add_argument("--sizes", default="100000,1000000,4000000", help="classes of the retrieval table")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--budget-mb", type=int, default=512, help="exact search up to this many MiB of FP16 prototypes")
    ap.add_argument("--serving-classes", type=int, default=1_000_000, help="the served index (one of --sizes)")
    ap.add_argument("--batch-sizes", default="256,1024", help="sweep: maximum batch sizes")
    ap.add_argument("--delays-us", default="100,1000", help="sweep: queue delays")
    ap.add_argument("--instances", default="1,2", help="sweep: encoder instances per GPU")
    ap.add_argument("--sweep-concurrency", default="512", help="sweep: load levels per setting")
    ap.add_argument("--concurrency", default="128,512,1024,2048", help="saturation of the chosen setting")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per load level")
    ap.add_argument("--processes", type=int, default=8, help="client processes of the load generator")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: retrieval, serving")
    ap.add_argument("--docs", default="docs/benchmarks.md", help="the benchmarks page a copy of which is updated")
    args = ap.parse_args(argv)
    from megaclass.loadtest.batching_sweep import SweepGrid
    from megaclass.loadtest.reporting import update_doc_section

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    report: dict[str, Any] = {
        "device": gpu_name(),
        "cpu": f"{platform.processor() or platform.machine()}, {usable_cores()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": " ".join(argv if argv is not None else __import__("sys").argv[1:]).replace(f"--out {args.out}", "").strip(),
        "budget_mb": args.budget_mb,
    }  # fmt: skip

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(report))
        if Path(args.docs).exists():
            shutil.copy(args.docs, out / "benchmarks.md")
            update_doc_section(out / "benchmarks.md", SECTION, markdown(report))

    skip = set(args.skip.split(","))
    index_dir = work / f"index-{args.serving_classes}"
    shutil.rmtree(index_dir, ignore_errors=True)
    # Most important first, so that a call cut short still brings back the headline numbers: the served
    # size's retrieval row (it builds the index served), the serving part, then the other sizes.
    first = [args.serving_classes] if "serving" not in skip or args.serving_classes in ints(args.sizes) else []
    rest = [n for n in ints(args.sizes) if n not in first] if "retrieval" not in skip else []
    report["retrieval"] = []

    def retrieval(sizes: list[int]) -> None:
        try:
            report["retrieval"] += retrieval_table(sizes, args.dim, args.budget_mb, {args.serving_classes: index_dir})
            report["retrieval"].sort(key=lambda t: t["classes"])
        except Exception:  # keep going: the other parts are checked even so
            report["retrieval_error"] = traceback.format_exc()
            log(report["retrieval_error"])
        save()

    retrieval(first)
    if "serving" not in skip:
        try:
            grid = SweepGrid(tuple(ints(args.batch_sizes)), tuple(ints(args.delays_us)), tuple(ints(args.instances)))
            report["serving"] = serving_on_gpu(
                work, index_dir, args.dim, args.budget_mb, grid, ints(args.sweep_concurrency),
                ints(args.concurrency), args.seconds, config_out=out / "megaclass-gpu.toml", processes=args.processes,
            )  # fmt: skip
        except Exception:
            report["serving_error"] = traceback.format_exc()
            log(report["serving_error"])
        save()
    retrieval(rest)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
