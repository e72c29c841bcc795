"""Load-test reports: Locust and perf_analyzer CSVs -> one Markdown and one HTML page with PNG plots.

The page is a list of `reporting` blocks, rendered as Markdown and as HTML. Plots (matplotlib, Agg):
throughput vs concurrency and latency percentiles vs throughput (perf_analyzer), and request
rate, latency and error rate over time (Locust's history CSV).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from megaclass.loadtest.locust_run import LocustStat, read_stats
from megaclass.loadtest.reporting import (
    Block,
    Figure,
    Heading,
    Paragraph,
    Table,
    format_ms,
    pyplot,
    to_html,
    to_markdown,
)

# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerfRow:
    """One row of a perf_analyzer sweep CSV (as `megaclass loadtest perf --out` writes it)."""

    model: str
    protocol: str
    concurrency: int
    request_rate: float
    throughput: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    batch_size: int

    @property
    def series(self) -> str:
        return f"{self.model} {self.protocol} b={self.batch_size}"


def _f(row: dict, key: str, default: float = float("nan")) -> float:
    try:
        return float(row.get(key, default))
    except (TypeError, ValueError):
        return default


def read_perf_csv(path: Path) -> list[PerfRow]:
    with open(path, newline="") as f:
        return [
            PerfRow(
                r.get("model", "?"),
                r.get("protocol", "?"),
                int(_f(r, "concurrency", 0)),
                _f(r, "request_rate", 0.0),
                _f(r, "throughput"),
                _f(r, "p50_us"),
                _f(r, "p90_us"),
                _f(r, "p95_us"),
                _f(r, "p99_us"),
                int(_f(r, "batch_size", 1)),
            )  # fmt: skip
            for r in csv.DictReader(f)
        ]


@dataclass(frozen=True)
class HistoryPoint:
    """One second of a Locust run (the Aggregated row of `_stats_history.csv`)."""

    t: float  # seconds since the first row
    users: int
    rps: float
    failures_per_s: float
    p50_ms: float
    p95_ms: float
    total_requests: int
    total_failures: int


def read_locust_history(path: Path) -> list[HistoryPoint]:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    if not rows:
        return []
    t0 = _f(rows[0], "Timestamp", 0.0)
    return [
        HistoryPoint(
            _f(r, "Timestamp", 0.0) - t0,
            int(_f(r, "User Count", 0)),
            _f(r, "Requests/s", 0.0),
            _f(r, "Failures/s", 0.0),
            _f(r, "50%"),
            _f(r, "95%"),
            int(_f(r, "Total Request Count", 0)),
            int(_f(r, "Total Failure Count", 0)),
        )  # fmt: skip
        for r in rows
    ]


def read_timeline(path: Path) -> list[HistoryPoint]:
    """The per-second timeline our locustfile writes (`<prefix>_latencies.json`): every request of
    the run, failures included, unlike Locust's history CSV, which a busy run may barely write."""
    rows = json.loads(path.read_text()).get("timeline", [])
    nan = float("nan")
    out, total, failed = [], 0, 0
    for r in rows:
        total += r["ok"] + r["failed"]
        failed += r["failed"]
        out.append(
            HistoryPoint(
                float(r["t"]),
                0,
                float(r["ok"] + r["failed"]),
                float(r["failed"]),
                nan if r["p50_ms"] is None else r["p50_ms"],
                nan if r["p95_ms"] is None else r["p95_ms"],
                total,
                failed,
            )  # fmt: skip
        )
    return out[:-1] if len(out) > 1 else out  # the last second is partial


def locust_prefix(path: Path) -> Path:
    """`run_stats.csv`, `run_stats_history.csv`, `run.html` or `run` -> the prefix `run`."""
    s = str(path)
    for suffix in ("_stats_history.csv", "_stats.csv", "_failures.csv", "_exceptions.csv", "_latencies.json", ".html"):
        if s.endswith(suffix):
            return Path(s[: -len(suffix)])
    return Path(s)


# --- plots ----------------------------------------------------------------------------------


def plot_perf(rows: Sequence[PerfRow], out_dir: Path) -> list[Figure]:
    """Throughput vs concurrency, and p50/p90/p99 latency vs throughput, one line per series."""
    plt = pyplot()
    series: dict[str, list[PerfRow]] = defaultdict(list)
    for r in rows:
        series[r.series].append(r)
    figures = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, rs in series.items():
        rs = sorted((r for r in rs if r.concurrency > 0), key=lambda r: r.concurrency)
        if rs:
            ax.plot([r.concurrency for r in rs], [r.throughput for r in rs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="concurrency (requests in flight)", ylabel="inferences / s", title="Throughput vs concurrency")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:  # request-rate sweeps only
        ax.text(0.5, 0.5, "no concurrency sweep", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out_dir / "perf_throughput.png", dpi=110)
    plt.close(fig)
    figures.append(Figure("plots/perf_throughput.png", "perf_analyzer: throughput vs concurrency"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, rs) in enumerate(series.items()):
        rs = sorted(rs, key=lambda r: r.throughput)
        color = f"C{i % 10}"
        for key, style in (("p50_us", ":"), ("p90_us", "--"), ("p99_us", "-")):
            ax.plot(
                [r.throughput for r in rs], [getattr(r, key) / 1e3 for r in rs], style, marker=".", color=color,
                label=f"{name} {key[:3]}",
            )  # fmt: skip
    ax.set(xlabel="inferences / s", ylabel="latency (ms)", title="Latency percentiles vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "perf_latency.png", dpi=110)
    plt.close(fig)
    figures.append(Figure("plots/perf_latency.png", "perf_analyzer: p50 (dotted), p90 (dashed), p99 (solid)"))
    return figures


def plot_locust_history(histories: dict[str, list[HistoryPoint]], out_dir: Path) -> list[Figure]:
    """Requests/s, latency (p50, p95) and error rate over time, one line per Locust run."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
    for i, (name, hist) in enumerate(histories.items()):
        color = f"C{i % 10}"
        t = [h.t for h in hist]
        axes[0].plot(t, [h.rps for h in hist], color=color, label=name)
        axes[1].plot(t, [h.p50_ms for h in hist], ":", color=color)
        axes[1].plot(t, [h.p95_ms for h in hist], "-", color=color)
        rate = [100 * h.failures_per_s / h.rps if h.rps > 0 else 0.0 for h in hist]
        axes[2].plot(t, rate, color=color)
    axes[0].set(ylabel="requests / s", title="Locust: over time")
    axes[1].set(ylabel="latency ms (p50 dotted, p95)")
    axes[2].set(ylabel="errors (% of requests)", xlabel="seconds")
    axes[2].set_ylim(bottom=0)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "locust_over_time.png", dpi=110)
    plt.close(fig)
    return [Figure("plots/locust_over_time.png", "Locust: request rate, latency and error rate over time")]


# --- the report -----------------------------------------------------------------------------


def locust_blocks(prefixes: Sequence[Path], plots_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Locust")]
    histories = {}
    for prefix in prefixes:
        stats: list[LocustStat] = read_stats(Path(f"{prefix}_stats.csv"))
        total = next((s for s in stats if s.name == "Aggregated"), None)
        blocks.append(Heading(prefix.name, 3))
        if total is not None:
            rate = 100 * total.failures / total.requests if total.requests else 0.0
            blocks.append(
                Paragraph(
                    f"{total.requests} requests, {total.failures} failures ({rate:.2f} %), "
                    f"{total.rps:.1f} requests/s; HTML report: `{prefix.name}.html`."
                )
            )
        blocks.append(
            Table(
                ["request", "requests", "failures", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"],
                [
                    [
                        f"{s.type} {s.name}".strip(),
                        str(s.requests),
                        str(s.failures),
                        f"{s.rps:.1f}",
                        format_ms(s.p50_ms),
                        format_ms(s.p90_ms),
                        format_ms(s.p95_ms),
                        format_ms(s.p99_ms),
                        format_ms(s.max_ms),
                    ]
                    for s in stats
                ],
            )  # fmt: skip
        )
        failures = Path(f"{prefix}_failures.csv")
        if failures.exists():
            with open(failures, newline="") as f:
                rows = [[r["Method"], r["Name"], r["Error"][:120], r["Occurrences"]] for r in csv.DictReader(f)]
            if rows:
                blocks.append(Table(["method", "request", "error", "count"], rows))
        measured, history = Path(f"{prefix}_latencies.json"), Path(f"{prefix}_stats_history.csv")
        if measured.exists():
            histories[prefix.name] = read_timeline(measured)
        elif history.exists():
            histories[prefix.name] = read_locust_history(history)
    if any(histories.values()):
        blocks.extend(plot_locust_history({k: v for k, v in histories.items() if v}, plots_dir))
    return blocks


def perf_blocks(paths: Sequence[Path], plots_dir: Path) -> list[Block]:
    rows = [r for p in paths for r in read_perf_csv(p)]
    blocks: list[Block] = [Heading("perf_analyzer")]
    blocks.append(
        Table(
            ["series", "concurrency", "request rate", "infer/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms"],
            [
                [
                    r.series,
                    str(r.concurrency),
                    f"{r.request_rate:g}" if r.request_rate else "–",
                    f"{r.throughput:.1f}",
                    format_ms(r.p50_us / 1e3),
                    format_ms(r.p90_us / 1e3),
                    format_ms(r.p95_us / 1e3),
                    format_ms(r.p99_us / 1e3),
                ]
                for r in rows
            ],
        )  # fmt: skip
    )
    if rows:
        blocks.extend(plot_perf(rows, plots_dir))
    return blocks


def build_report(
    out_dir: Path,
    locust: Sequence[Path] = (),
    perf: Sequence[Path] = (),
    title: str = "megaclass load test report",
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write `out_dir/report.md`, `out_dir/report.html` and `out_dir/plots/*.png`."""
    if not locust and not perf:
        raise ValueError("nothing to report: give Locust CSV prefixes and/or perf_analyzer CSVs")
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [Heading(title, 1), *(Paragraph(n) for n in notes)]
    if locust:
        prefixes = list(dict.fromkeys(locust_prefix(Path(p)) for p in locust))
        missing = [p for p in prefixes if not Path(f"{p}_stats.csv").exists()]
        if missing:
            raise FileNotFoundError(f"no Locust statistics at {', '.join(f'{p}_stats.csv' for p in missing)}")
        blocks += locust_blocks(prefixes, plots)
    if perf:
        blocks += perf_blocks([Path(p) for p in perf], plots)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(blocks))
    page.write_text(to_html(blocks, title))
    return md, page
