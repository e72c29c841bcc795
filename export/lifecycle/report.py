"""The lifecycle report: metrics across refreshes, classes added and removed, gate decisions (Markdown + PNG).

Read from the MLflow store (`diff` and `gate` runs, matched by their `refresh_key` tag), so it
covers every refresh that was tracked, whichever runner ran it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megaclass.export.config import TrackingConfig
from megaclass.export.lifecycle import tracking

METRICS = ("precision_at_1", "hit_rate_at_5", "search_recall")


def refresh_rows(cfg: TrackingConfig, work_dir: str | Path) -> list[dict[str, Any]]:
    """One row per gated refresh, oldest first: time, key, decision, reasons, added/removed, metrics."""
    gates = tracking.find_runs(cfg, work_dir, "tags.stage = 'gate'")
    diffs = {r.data.tags.get("refresh_key"): r for r in tracking.find_runs(cfg, work_dir, "tags.stage = 'diff'")}
    rows = []
    for g in reversed(gates):
        key = g.data.tags.get("refresh_key", "")
        d = diffs.get(key)
        m = g.data.metrics
        rows.append({
            "start": g.info.start_time, "key": key, "decision": g.data.tags.get("decision", "?"),
            "reasons": g.data.tags.get("reasons", ""),
            "added": int(d.data.metrics.get("added", 0)) if d else 0,
            "removed": int(d.data.metrics.get("removed", 0)) if d else 0,
            **{f"candidate_{k}": m.get(f"candidate_{k}") for k in METRICS},
            **{f"serving_{k}": m.get(f"serving_{k}") for k in METRICS},
        })  # fmt: skip
    return rows


def _plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(1, len(rows) + 1))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k in METRICS:
        ax.plot(x, [r[f"candidate_{k}"] for r in rows], marker="o", label=f"candidate {k}")
        ax.plot(x, [r[f"serving_{k}"] for r in rows], ls="--", alpha=0.6, label=f"serving {k}")
    for xi, r in zip(x, rows, strict=True):
        ax.axvspan(xi - 0.4, xi + 0.4, color="tab:green" if r["decision"] == "passed" else "tab:red", alpha=0.08)
    ax.set(xlabel="refresh", ylabel="metric", title="metrics per refresh (green: published, red: refused)", xticks=x)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    metrics_png = out / "metrics.png"
    fig.savefig(metrics_png, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([i - 0.2 for i in x], [r["added"] for r in rows], width=0.4, label="added")
    ax.bar([i + 0.2 for i in x], [r["removed"] for r in rows], width=0.4, label="removed")
    ax.set(xlabel="refresh", ylabel="classes", title="classes added and removed per refresh", xticks=x)
    ax.legend()
    fig.tight_layout()
    classes_png = out / "classes.png"
    fig.savefig(classes_png, dpi=110)
    plt.close(fig)
    return [metrics_png, classes_png]


def write_report(cfg: TrackingConfig, work_dir: str | Path, out: Path) -> Path:
    """`out/lifecycle.md` with `out/metrics.png` and `out/classes.png`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = refresh_rows(cfg, work_dir)
    lines = [
        "# megaclass lifecycle report",
        "",
        f"{len(rows)} gated refreshes in {tracking.tracking_uri(cfg, work_dir)}.",
        "",
    ]
    if rows:
        for png in _plots(rows, out):
            lines += [f"![{png.stem}]({png.name})", ""]
    lines += ["| # | refresh | added | removed | precision@1 cand./serving | hit rate@5 cand./serving | decision |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, r in enumerate(rows, 1):

        def pair(k: str, r: dict[str, Any] = r) -> str:
            c, s = r[f"candidate_{k}"], r[f"serving_{k}"]
            return f"{c:.3f} / {s:.3f}" if c is not None and s is not None else "-"

        why = r["decision"] + (f": {r['reasons']}" if r["reasons"] else "")
        lines.append(
            f"| {i} | {r['key']} | {r['added']} | {r['removed']} | {pair('precision_at_1')} | {pair('hit_rate_at_5')} | {why} |"
        )
    md = out / "lifecycle.md"
    md.write_text("\n".join(lines) + "\n")
    return md
