"""The head-to-head: the Triton `classify` ensemble against the FastAPI service a user would
write instead (`baseline_service`), same encoder, same index, same images, same load
generator (Locust, one closed-loop user per unit of concurrency), same machine, one command.

`run_head_to_head` serves each target in turn (never two at once), sweeps the concurrency
levels with a bounded headless Locust run per point, and returns one `H2HPoint` per target and
level; `write_outputs` keeps the CSV, the plots and a Markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import platform
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np

from megaclass.export.config import MegaclassConfig, load_config
from megaclass.loadtest.locust_run import LocustSettings, run_locust
from megaclass.python_backend.server.triton_server import free_port, start_server

TARGETS = {
    "triton-grpc": "TritonGrpcUser",
    "triton-http": "TritonHttpUser",
    "baseline": "BaselineHttpUser",
    "baseline-tuned": "BaselineHttpUser",
}
TARGET_LABELS = {
    "triton-grpc": "Triton ensemble (gRPC)",
    "triton-http": "Triton ensemble (HTTP)",
    "baseline": "FastAPI baseline (HTTP)",
    "baseline-tuned": "FastAPI baseline, 1 ORT thread (HTTP)",
}
BASELINES = ("baseline", "baseline-tuned")


@dataclass(frozen=True)
class HeadToHeadConfig:
    """The benchmark's own settings (the `[bench]` table of the TOML file)."""

    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    duration_s: float = 20.0
    warmup_s: float = 4.0
    batch_size: int = 1
    classes: int = 20000
    image_count: int = 256
    targets: tuple[str, ...] = ("triton-grpc", "triton-http", "baseline", "baseline-tuned")
    baseline_handler: str = "threadpool"
    baseline_threads: int = 0  # "baseline": ONNX Runtime's default, as a user writes it
    tuned_baseline_threads: int = 1  # "baseline-tuned": the one option that closes most of the gap
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise ValueError(f"targets must be among {sorted(TARGETS)}, got {list(self.targets)}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be positive, got {self.concurrency}")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.batch_size < 1 or self.classes < 2:
            raise ValueError(f"invalid benchmark settings {self}")
        if self.baseline_handler not in ("threadpool", "inline"):
            raise ValueError(f"baseline_handler must be 'threadpool' or 'inline', got {self.baseline_handler!r}")


def default_config_path() -> Path:
    return Path(str(resources.files("megaclass.loadtest.benchmarks") / "bench_serving.toml"))


def load_bench_config(
    path: Path | None = None, bench_overrides: dict | None = None
) -> tuple[HeadToHeadConfig, MegaclassConfig]:
    """The `[bench]` table as HeadToHeadConfig, everything else as megaclass's configuration."""
    with open(path or default_config_path(), "rb") as f:
        data = tomllib.load(f)
    bench = {**data.pop("bench", {}), **(bench_overrides or {})}
    fields = {f.name for f in dataclasses.fields(HeadToHeadConfig)}
    unknown = set(bench) - fields
    if unknown:
        raise ValueError(f"unknown [bench] option(s): {sorted(unknown)}; known: {sorted(fields)}")
    bench = {k: tuple(v) if isinstance(v, list) else v for k, v in bench.items()}
    return HeadToHeadConfig(**bench), load_config(None, data)


# --- what is served ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchArtifacts:
    """The encoder, the index, the Triton repository built from them, and the images sent."""

    onnx: Path
    index: Path
    repository: Path
    images: Path  # uint8 [N, S, S] .npy
    image_size: int
    embedding_dim: int
    num_classes: int
    source: str  # where the encoder and index came from


def newest_version_file(model_dir: Path, name: str) -> Path:
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), reverse=True)
    for v in versions:
        if (model_dir / str(v) / name).exists():
            return model_dir / str(v) / name
    raise FileNotFoundError(f"no version of {model_dir} holds {name}")


def glyph_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """`count` characters rendered from DejaVu Sans (the glyph set's rendering rule), or
    seeded blob patterns where that font is missing; uint8 `[count, size, size]`."""
    try:
        from megaclass.export.config import GlyphDataConfig
        from megaclass.export.data.glyphs import load_font, render_char

        font_file = next(Path("/usr/share/fonts").rglob("DejaVuSans.ttf"))
        cfg = GlyphDataConfig(image_size=size)
        font = load_font(str(font_file), cfg)
        images = []
        for cp in range(0x21, 0x3000):
            img = render_char(font, chr(cp), cfg) if chr(cp).isprintable() else None
            if img is not None:
                images.append(img)
            if len(images) == count:
                return np.stack(images).astype(np.uint8)
    except (StopIteration, ImportError, OSError, AttributeError, TypeError):
        pass
    rng = np.random.default_rng(seed)
    blobs = rng.random((count, max(1, size // 4), max(1, size // 4))) > 0.5
    return (blobs.repeat(4, axis=1).repeat(4, axis=2)[:, :size, :size] * 255).astype(np.uint8)


def prepare_artifacts(
    work: Path, bench: HeadToHeadConfig, cfg: MegaclassConfig, repository: Path | None = None
) -> BenchArtifacts:
    """Encoder and index from `repository` (newest versions) or synthetic ones, then a Triton
    repository built from them with the configured serving settings."""
    from megaclass.export.repository.generate import ModelShapes, build_repository
    from megaclass.python_backend.index.routed_index import RoutedIndex

    work.mkdir(parents=True, exist_ok=True)
    if repository is not None:
        onnx_path = newest_version_file(Path(repository) / "encoder", "encoder.onnx")
        index_dir = newest_version_file(Path(repository) / "retriever", "index")
        source = f"repository {repository} ({onnx_path.parent.name}/{index_dir.parent.name})"
    else:
        onnx_path, index_dir = synthetic_encoder_and_index(work, bench, cfg)
        source = (
            f"synthetic: untrained GlyphEncoder(width={cfg.train.width}, dim={cfg.train.embedding_dim}), "
            f"{bench.classes} random unit-vector prototypes"
        )
    import onnxruntime as ort

    inp = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    size = int(inp.shape[-1])
    index = RoutedIndex.load(index_dir)
    repo = work / "repository"
    import shutil

    shutil.rmtree(repo, ignore_errors=True)
    build_repository(repo, onnx_path, index_dir, ModelShapes(size, index.dim), cfg.serving, cfg.export)
    images = work / "images.npy"
    np.save(images, glyph_images(bench.image_count, size, bench.seed))
    return BenchArtifacts(onnx_path, index_dir, repo, images, size, index.dim, index.num_classes, source)


def _loads(index_dir: Path) -> bool:
    """A cached index that this version of the index library still reads."""
    from megaclass.python_backend.index.routed_index import RoutedIndex

    try:
        RoutedIndex.load(index_dir)
        return True
    except Exception:
        return False


def synthetic_encoder_and_index(work: Path, bench: HeadToHeadConfig, cfg: MegaclassConfig) -> tuple[Path, Path]:
    """An untrained GlyphEncoder exported to ONNX and a routed index of random prototypes (cached)."""
    from megaclass.export.config import config_hash

    key = config_hash(cfg.train.width, cfg.train.embedding_dim, cfg.glyphs.image_size, cfg.index, bench.classes)
    onnx_path, index_dir = work / f"encoder-{key}.onnx", work / f"index-{key}"
    if onnx_path.exists() and _loads(index_dir):
        return onnx_path, index_dir
    import torch

    from megaclass.export.convert.onnx_export import export_onnx
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.encoder_model import build_encoder

    torch.manual_seed(bench.seed)
    export_onnx(build_encoder(cfg.train, cfg.glyphs.image_size).eval(), onnx_path, cfg.export, cfg.glyphs.image_size)
    rng = np.random.default_rng(bench.seed)
    protos = rng.standard_normal((bench.classes, cfg.train.embedding_dim)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    ids = np.arange(bench.classes, dtype=np.int64)
    import shutil

    shutil.rmtree(index_dir, ignore_errors=True)
    RoutedIndex.build(protos, ids, {int(i): f"class-{i}" for i in ids}, cfg.index).save(index_dir)
    return onnx_path, index_dir


# --- serving each target ----------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    http: str  # http://host:port
    grpc: str  # host:port ("" for the baseline)


@contextlib.contextmanager
def serve_triton(art: BenchArtifacts, cfg: MegaclassConfig, work: Path) -> Iterator[Endpoint]:
    server = start_server(
        art.repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        work_dir=work / "triton",
        ready_timeout_s=cfg.serving.ready_timeout_s,
        shm_default_byte_size=cfg.serving.shm_default_byte_size,
    )
    try:
        yield Endpoint(f"http://{server.http_url}", server.grpc_url)
    finally:
        server.stop()


@contextlib.contextmanager
def serve_baseline(
    art: BenchArtifacts, bench: HeadToHeadConfig, work: Path, threads: int, timeout_s: float = 120
) -> Iterator[Endpoint]:
    port = free_port()
    log = open(work / "baseline.log", "w")  # noqa: SIM115 - closed below
    cmd = [
        sys.executable, "-m", "megaclass.loadtest.benchmarks.baseline_service",
        "--onnx", str(art.onnx), "--index", str(art.index), "--port", str(port),
        "--handler", bench.baseline_handler, "--threads", str(threads),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the baseline exited with {proc.returncode}: {(work / 'baseline.log').read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the baseline did not answer /info in time") from None
                time.sleep(0.3)
        yield Endpoint(f"http://127.0.0.1:{port}", "")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def encoder_batch_counts(grpc_url: str) -> dict[int, int]:
    """Executions per batch size of the Triton encoder so far."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics("encoder", as_json=True)["model_stats"]
    finally:
        client.close()
    counts: dict[int, int] = {}
    for model in stats:
        for b in model.get("batch_stats", []):
            counts[int(b["batch_size"])] = counts.get(int(b["batch_size"]), 0) + int(b["compute_infer"]["count"])
    return counts


def mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    """Mean batch size of the executions between two `encoder_batch_counts`."""
    delta = {b: after.get(b, 0) - before.get(b, 0) for b in after}
    runs = sum(delta.values())
    return sum(b * n for b, n in delta.items()) / runs if runs else float("nan")


# --- the sweep --------------------------------------------------------------------------------


@dataclass(frozen=True)
class H2HPoint:
    target: str
    concurrency: int
    requests: int
    failures: int
    rps: float
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_encoder_batch: float  # Triton only (NaN for the baseline)


@dataclass
class H2HRun:
    bench: HeadToHeadConfig
    cfg: MegaclassConfig
    artifacts: BenchArtifacts
    points: list[H2HPoint] = field(default_factory=list)
    started: str = ""
    machine: str = ""
    note: str = ""


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, load average at start {load}"


def run_head_to_head(
    out_dir: Path,
    bench: HeadToHeadConfig,
    cfg: MegaclassConfig,
    repository: Path | None = None,
    note: str = "",
    log=print,
) -> H2HRun:
    """Prepare, serve each target in turn, sweep the concurrency levels; returns every point."""
    out_dir = Path(out_dir)
    work = out_dir / "work"
    run = H2HRun(bench, cfg, prepare_artifacts(work, bench, cfg, repository), note=note)
    run.started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    run.machine = machine_description()
    art = run.artifacts
    log(f"serving {art.source}: {art.num_classes} classes, images {art.image_size}x{art.image_size}")
    for target in bench.targets:
        if target in BASELINES:
            threads = bench.baseline_threads if target == "baseline" else bench.tuned_baseline_threads
            server = serve_baseline(art, bench, work, threads)
        else:
            server = serve_triton(art, cfg, work)
        with server as endpoint:
            for c in bench.concurrency:
                settings = LocustSettings(
                    host=endpoint.http,
                    grpc_url=endpoint.grpc,
                    users=c,
                    spawn_rate=float(c),
                    run_time_s=bench.warmup_s + bench.duration_s,
                    warmup_s=bench.warmup_s,
                    user_classes=(TARGETS[target],),
                    batch_mix=f"{bench.batch_size}:1",
                    model_mix="classify:1",
                    images=art.images,
                    seed=bench.seed,
                )
                before = encoder_batch_counts(endpoint.grpc) if endpoint.grpc else {}
                result = run_locust(settings, out_dir / "locust", f"{target}-c{c}")
                after = encoder_batch_counts(endpoint.grpc) if endpoint.grpc else {}
                t, m = result.total, result.measured()
                if m is None or m.requests == 0 or result.returncode not in (0, 1):
                    log(f"locust exit {result.returncode}, measured {m}; its output:\n{result.output_tail}")
                p50, p90, p99 = result.percentiles_ms((50, 90, 99))
                point = H2HPoint(
                    target, c,
                    m.requests if m else t.requests, m.failures if m else t.failures,
                    m.rps if m else t.rps, m.rows_per_s if m else result.images_per_s,
                    p50, p90, p99,
                    mean_batch(before, after) if endpoint.grpc else float("nan"),
                )  # fmt: skip
                run.points.append(point)
                log(
                    f"{target:<12} c={c:<3} {point.rps:8.1f} req/s  p50 {point.p50_ms:6.1f} ms  "
                    f"p99 {point.p99_ms:6.1f} ms  failures {point.failures}"
                    + (f"  mean encoder batch {point.mean_encoder_batch:.1f}" if endpoint.grpc else "")
                )
    return run


def write_csv(points: Sequence[H2HPoint], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f.name for f in dataclasses.fields(H2HPoint)])
        for p in points:
            w.writerow(dataclasses.astuple(p))


def read_csv(path: Path) -> list[H2HPoint]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    types = {f.name: f.type for f in dataclasses.fields(H2HPoint)}
    conv = {"str": str, "int": int, "float": float}
    return [H2HPoint(**{k: conv[types[k]](v) for k, v in r.items()}) for r in rows]


def verdict(points: Sequence[H2HPoint], concurrency: int = 32, factor: float = 2.0) -> tuple[bool, str]:
    """Does the best Triton target at `concurrency` serve >= factor x the baseline with a lower p99?"""
    at = {p.target: p for p in points if p.concurrency == concurrency}
    base = at.get("baseline")
    tritons = [p for t, p in at.items() if t not in BASELINES]
    if base is None or not tritons:
        return False, f"no baseline and Triton points at concurrency {concurrency}"
    lines, ok = [], False
    for p in tritons:
        ratio = p.rps / base.rps if base.rps else float("inf")
        good = ratio >= factor and p.p99_ms < base.p99_ms and p.failures == 0
        ok = ok or good
        lines.append(
            f"{TARGET_LABELS[p.target]}: {ratio:.2f}x the baseline's throughput, p99 {p.p99_ms:.0f} ms vs "
            f"{base.p99_ms:.0f} ms ({'meets' if good else 'misses'} the target)"
        )
    return ok, "; ".join(lines)


# --- outputs ----------------------------------------------------------------------------------


def _concurrency_axis(ax, points: Sequence[H2HPoint]) -> None:
    from matplotlib.ticker import NullLocator

    levels = sorted({p.concurrency for p in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.xaxis.set_minor_locator(NullLocator())


def plot_points(points: Sequence[H2HPoint], out_dir: Path, stem: str = "serving_h2h") -> list[Path]:
    """Throughput vs concurrency, and p50/p99 vs concurrency, one line per target."""
    from megaclass.loadtest.report import _pyplot

    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = list(dict.fromkeys(p.target for p in points))
    paths = [out_dir / f"{stem}_throughput.png", out_dir / f"{stem}_latency.png"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, t in enumerate(targets):
        ps = sorted((p for p in points if p.target == t), key=lambda p: p.concurrency)
        ax.plot([p.concurrency for p in ps], [p.images_per_s for p in ps], marker="o", color=f"C{i}",
                label=TARGET_LABELS[t])  # fmt: skip
    _concurrency_axis(ax, points)
    ax.set(xlabel="concurrency (closed-loop Locust users)", ylabel="images / s", title="Throughput")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, t in enumerate(targets):
        ps = sorted((p for p in points if p.target == t), key=lambda p: p.concurrency)
        c = [p.concurrency for p in ps]
        ax.plot(c, [p.p50_ms for p in ps], ":", marker=".", color=f"C{i}", label=f"{TARGET_LABELS[t]} p50")
        ax.plot(c, [p.p99_ms for p in ps], "-", marker="o", color=f"C{i}", label=f"{TARGET_LABELS[t]} p99")
    _concurrency_axis(ax, points)
    ax.set_yscale("log")
    ax.set(xlabel="concurrency (closed-loop Locust users)", ylabel="latency (ms)", title="Latency: p50 (dotted), p99")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def section_markdown(run: H2HRun, plot_paths: Sequence[str], command: str) -> str:
    """The docs/benchmarks.md section of a head-to-head run."""
    from megaclass.loadtest.report import Figure, Heading, Paragraph, Table, _ms, to_markdown

    b, s, art = run.bench, run.cfg.serving, run.artifacts
    ok, why = verdict(run.points)
    levels = sorted({p.concurrency for p in run.points})
    by = {(p.target, p.concurrency): p for p in run.points}
    rows = []
    for t in dict.fromkeys(p.target for p in run.points):
        for c in levels:
            p = by.get((t, c))
            if p is None:
                continue
            base = by.get(("baseline", c))
            ratio = f"{p.rps / base.rps:.2f}x" if base and base.rps and t != "baseline" else "–"
            batch = "–" if math.isnan(p.mean_encoder_batch) else f"{p.mean_encoder_batch:.1f}"
            rows.append([TARGET_LABELS[t], str(c), f"{p.images_per_s:.0f}", ratio, _ms(p.p50_ms), _ms(p.p90_ms),
                         _ms(p.p99_ms), str(p.failures), batch])  # fmt: skip
    enc, ret = s.encoder, s.retriever
    blocks = [
        Heading("Serving head-to-head: Triton ensemble vs a FastAPI service", 2),
        Paragraph(
            f"Produced by `{command}` on {run.started}. Machine: {run.machine}." + (f" {run.note}" if run.note else "")
        ),
        Paragraph(
            f"**Result at concurrency 32: {'target met' if ok else 'target missed'}** — {why}. "
            "The target is at least 2x the baseline's throughput with a lower p99."
        ),
        Paragraph(
            f"Same encoder and index for both ({art.source}; {art.num_classes} classes, {art.embedding_dim}-d "
            f"embeddings, {art.image_size}x{art.image_size} images), the same {b.image_count} glyph images, "
            f"{b.batch_size} image(s) per request, the same load generator: Locust, one process, one closed-loop "
            f"user per unit of concurrency (no think time), {b.warmup_s:g} s warm-up then {b.duration_s:g} s "
            "measured per point. Each server runs alone; Locust shares the machine with it. Latencies are "
            "measured in Locust's users (client side), exactly: every response time after the warm-up."
        ),
        Paragraph(
            "**Baseline**: one uvicorn process running a FastAPI app that loads the ONNX Runtime session and the "
            "routed index once and, per request, reads the raw float32 tensor, runs the encoder and the search, "
            f"and returns JSON (handler `{b.baseline_handler}`: the model runs in Starlette's thread pool, so "
            "requests overlap where ONNX Runtime and FAISS release the GIL). No batching across requests. "
            "`baseline` keeps ONNX Runtime's default session options, as a user writes it (one intra-op thread "
            "per core, spinning while it waits); `baseline-tuned` sets "
            f"`intra_op_num_threads={b.tuned_baseline_threads}`, the one option that lets concurrent requests "
            "share the cores instead of fighting over them. The target is judged against `baseline`; "
            "`baseline-tuned` shows how much of the gap a FastAPI user closes without batching."
        ),
        Paragraph(
            "**Triton**: the `classify` ensemble (Python-backend encoder running the same ONNX file with ONNX "
            "Runtime -> Python-backend retriever running the same index), built by `build_repository` from "
            f"`loadtest/benchmarks/bench_serving.toml`: encoder max batch {enc.max_batch_size}, preferred "
            f"{list(enc.preferred_batch_sizes)}, queue delay {enc.max_queue_delay_us} µs, {enc.instances} "
            f"instance(s); retriever max batch {ret.max_batch_size}, queue delay {ret.max_queue_delay_us} µs, "
            f"{ret.instances} instance(s). 'Mean encoder batch' is the average batch the encoder executed "
            "(Triton's statistics). Where Triton's advantage comes from on this CPU: each encoder instance is a "
            "process with ONNX Runtime sized to its share of the cores (instances x threads = cores), so no "
            "thread oversubscription; the encoder, the retriever and the C++ HTTP/gRPC front end run in "
            "parallel on consecutive batches; and dynamic batching pays the per-call overheads (Python-backend "
            "IPC, ONNX Runtime session run, FAISS call) once per batch. ONNX Runtime's per-image compute for "
            "this small CNN barely drops with the batch size on a CPU, so batching alone is not the win here "
            "(on a GPU it is)."
        ),
        Table(
            [
                "target",
                "concurrency",
                "images/s",
                "vs baseline",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "failures",
                "mean encoder batch",
            ],
            rows,
        ),  # fmt: skip
        *(
            Figure(p, cap)
            for p, cap in zip(plot_paths, ["Throughput vs concurrency", "Latency vs concurrency"], strict=False)
        ),
        Paragraph(
            "Caveats: a small CPU machine, client and server on the same cores, so absolute numbers are low and "
            "noisy; on a GPU the gap from batching is much larger. Each point's Locust CSV/HTML and exact "
            "latencies are kept under the command's `--out` folder (default `runs/bench-serving/locust/`, "
            "not committed)."
        ),
    ]
    return to_markdown(blocks)


def write_outputs(run: H2HRun, out_dir: Path, doc: Path | None, command: str) -> dict[str, Path]:
    """CSV and plots under `out_dir`; with `doc`, plots beside it and its section updated."""
    from megaclass.loadtest.report import update_doc_section

    out_dir = Path(out_dir)
    write_csv(run.points, out_dir / "head_to_head.csv")
    plots = plot_points(run.points, out_dir / "plots")
    written = {"csv": out_dir / "head_to_head.csv", **{p.stem: p for p in plots}}
    if doc is not None:
        img_dir = doc.parent / "img"
        img_dir.mkdir(parents=True, exist_ok=True)
        rel = []
        for p in plots:
            (img_dir / p.name).write_bytes(p.read_bytes())
            rel.append(f"img/{p.name}")
        section = section_markdown(run, rel, command)
        update_doc_section(doc, "serving-head-to-head", section)
        written["doc"] = doc
    (out_dir / "head_to_head.md").write_text(section_markdown(run, [f"plots/{p.name}" for p in plots], command))
    written["md"] = out_dir / "head_to_head.md"
    return written
