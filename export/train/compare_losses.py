"""Compare the training losses on one data set and time budget: the table of docs/training.md.

Each method trains from the same seed on the same data for at most `minutes_per_method`
(`TrainConfig.epochs` is the other bound), then is evaluated as served (queries against class
prototypes; see `evaluation.py`). The plain softmax baseline answers with its own head, so it
cannot answer classes it was not trained on; its MAP@R is that of its embedding.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from megaclass.export.config import MegaclassConfig, replace
from megaclass.export.data.data_sources import DataSpec, eval_sets_from_spec
from megaclass.export.evaluate.evaluation import evaluate_sets, softmax_head_metrics, write_report
from megaclass.export.train.from_spec import train_from_spec

# (row name, folder, TrainConfig changes)
METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("contrastive", "contrastive", {"loss": "contrastive", "mining": "all"}),
    ("triplet, semi-hard mining", "triplet-semihard", {"loss": "triplet", "mining": "semihard"}),
    ("triplet, hard mining", "triplet-hard", {"loss": "triplet", "mining": "hard"}),
    ("margin-softmax (CosFace, partial FC)", "cosface", {"loss": "cosface"}),
    ("softmax, full head (baseline)", "softmax", {"loss": "softmax"}),
)
BEGIN, END = "<!-- compare-losses:begin -->", "<!-- compare-losses:end -->"


def compare_losses(
    cfg: MegaclassConfig,
    spec: DataSpec,
    out_dir: Path,
    minutes_per_method: float | None,
    methods: tuple[tuple[str, str, dict[str, Any]], ...] = METHODS,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate each method; one row (dict) per method, also written to out_dir/<folder>/.

    `minutes_per_method` None: each method gets `cfg.train.max_minutes` (None: only the epoch count bounds it).
    """
    import torch

    out_dir = Path(out_dir)
    sets = None
    rows = []
    for name, folder, changes in methods:
        budget = minutes_per_method if minutes_per_method is not None else cfg.train.max_minutes
        train_cfg = replace(cfg.train, max_minutes=budget, **changes)
        run_cfg = replace(cfg, train=train_cfg)
        t0 = time.perf_counter()
        result = train_from_spec(spec, run_cfg, out_dir / folder, progress=progress, epoch_eval=False)
        wall_s = time.perf_counter() - t0
        if sets is None:
            sets = eval_sets_from_spec(spec, cfg, None, progress=progress)
        report, _ = evaluate_sets(result.model, sets, cfg.index, ks=(5,))
        row: dict[str, Any] = {
            "method": name,
            "loss": train_cfg.loss,
            "mining": train_cfg.mining,
            "epochs": len(result.history),
            "train_s": result.history[-1]["elapsed_s"] if result.history else 0.0,
            "wall_s": wall_s,
            "splits": report["splits"],
        }
        if train_cfg.loss == "softmax":
            ckpt = torch.load(result.checkpoint_path, map_location="cpu", weights_only=True)
            row["softmax_head"] = softmax_head_metrics(ckpt, result.model, sets)
        write_report({**row, "report": report}, out_dir / folder / "compare_row.json")
        rows.append(row)
    return rows


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) and x == x else "–"


def markdown_table(rows: list[dict[str, Any]], command: str, note: str = "") -> str:
    """The comparison as a Markdown table, with the command that reproduces it."""
    lines = [
        "| method | P@1 held-out fonts | MAP@R held-out fonts | P@1 tail (≤2 training samples) | "
        "P@1 held-out classes | epochs | training time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["splits"]
        p1, tail, new = s["seen_classes"].get("precision_at_1"), s["tail"].get("precision_at_1"), None
        if "softmax_head" in r:
            head = r["softmax_head"]
            p1, tail = head["seen_classes"]["precision_at_1"], head["tail"]["precision_at_1"]
            new_cell = "cannot answer"
        else:
            new = s["held_out_classes"].get("precision_at_1")
            new_cell = _fmt(new)
        lines.append(
            f"| {r['method']} | {_fmt(p1)} | {_fmt(s['seen_classes'].get('map_at_r'))} | {_fmt(tail)} | "
            f"{new_cell} | {r['epochs']} | {r['train_s']:.1f} s |"
        )
    legend = (
        "Precision@1 against one prototype per class (all classes enrolled in one gallery, as served); "
        "MAP@R against every enrolment sample."
    )
    if any("softmax_head" in r for r in rows):
        legend += (
            " The softmax baseline answers with its classifier head (MAP@R: its embedding), so it has no "
            "answer for classes it was not trained on."
        )
    foot = ["", legend]
    if note:
        foot.append(note)
    foot += ["", "Reproduce with:", "", "```", command, "```"]
    return "\n".join(lines + foot)


def update_doc(doc: Path, table: str, title: str = "# Training") -> Path:
    """Put `table` between the compare-losses markers of `doc` (created, or the block appended, when missing)."""
    doc = Path(doc)
    block = f"{BEGIN}\n{table}\n{END}"
    text = doc.read_text() if doc.exists() else f"{title}\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Losses compared\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc
