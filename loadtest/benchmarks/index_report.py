"""The index benchmark's outputs: the table of methods, the recall-vs-QPS plot, the docs section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megaclass.loadtest.reporting import copy_into_docs, pyplot, update_doc_section
from megaclass.loadtest.reporting import markdown_table as render_table


def markdown_table(report: dict[str, Any]) -> str:
    """One row per method: setting, recall, QPS and p50/p99 per batch size, build, bytes/class.

    (A "bandwidth floor" column was dropped: bytes read per query are a model, and values above 100 %
    showed it could not be read as what it claimed.)"""
    runs = report["runs"]
    batches = sorted({int(b) for r in runs for b in r["timings"]})
    ivfs = [r for r in runs if r["name"].startswith("FAISS IndexIVF") and "64" in map(str, r["timings"])]
    ivf = max(ivfs, key=lambda r: {str(b): v for b, v in r["timings"].items()}["64"]["qps"], default=None)
    head = ["method", "setting", f"recall@{report['top_k']}"]
    head += [f"QPS b={b}" for b in batches] + [f"p50/p99 ms b={b}" for b in batches]
    head += ["× best IVF (b=64)", "build s", "bytes/class"]
    rows = []
    for r in runs:
        t = {int(b): v for b, v in r["timings"].items()}
        ratio = (
            t[64]["qps"] / {int(b): v for b, v in ivf["timings"].items()}[64]["qps"]
            if ivf and 64 in t
            else float("nan")
        )
        row = [r["name"], r["setting"], f"{r['recall']:.3f}"]
        row += [f"{t[b]['qps']:.0f}" for b in batches]
        row += [f"{t[b]['p50_ms']:.2f} / {t[b]['p99_ms']:.2f}" for b in batches]
        row += [f"{ratio:.2f}", f"{r['build_s']:.0f}", f"{r['bytes_per_class']:.0f}"]
        rows.append(row)
    return render_table(head, rows, align="ll") + "\n"


def plot(report: dict[str, Any], path: Path, batch: int = 64) -> None:
    """Recall vs QPS at `batch` for every swept method (log QPS)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["runs"]:
        pts = sorted(r["curve"]) or [(r["recall"], r["timings"][batch]["qps"] if batch in r["timings"] else
                                      r["timings"][str(batch)]["qps"])]  # fmt: skip
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r["name"])
    ax.axvline(report["target_recall"], color="grey", ls="--", lw=1)
    ax.set_xlabel(f"search recall@{report['top_k']} (classes, vs exact)")
    ax.set_ylabel(f"queries / s (batch {batch}, {report['threads']} threads)")
    ax.set_yscale("log")
    ax.set_title(f"{report['name']}: {report['classes']} classes × {report['dim']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_doc_section(report: dict[str, Any], doc: Path, png: Path, source: str) -> None:
    """Put the table and plot into `doc` (section `index-<name>`), plot copied to `doc`'s img/ folder."""
    image = copy_into_docs(png, doc, f"index-{report['name']}.png")
    text = (
        f"## Routed index vs FAISS: {report['name']}\n\n"
        f"Machine: {report['machine']}; {report['threads']} threads for every method; measured copy bandwidth "
        f"{report['copy_bandwidth_gbs']:.1f} GB/s. Data: {source}; {report['prototypes']} prototypes, "
        f"{report['classes']} classes, dim {report['dim']}. Recall: search recall@{report['top_k']} of classes "
        f"against exact search on {report['eval_queries']} held-out queries (settings tuned on another "
        f"{report['eval_queries']}, the two halves drawn at random, for every method alike). Each method at "
        f"its fastest setting reaching recall {report.get('tune_target', report['target_recall']):.3f} on the "
        f"tuning half (the target {report['target_recall']} plus a margin, so that it holds on the held-out half). "
        f"QPS = queries / wall time over all batches (best of {report.get('final_rounds', 3)} passes, every "
        "method's passes interleaved round-robin); p50/p99 = per-batch latency. "
        f"{report.get('peers_line', 'peers: not tried')}.\n\n"
        + markdown_table(report)
        + f"\n![recall vs QPS]({image})\n"
    )
    update_doc_section(doc, f"index-{report['name']}", text)
