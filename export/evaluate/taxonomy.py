"""Costs of mistakes that follow a class hierarchy: how far each wrong top-1 answer lands from the truth.

Taxonomy file (UTF-8 text, comma-separated, ``#`` comments and blank lines skipped, an optional
``class,parent`` header): one ``node,parent`` line per node, any depth; a class id is a node whose
name is the id. A node with no line, or an empty parent, hangs from the (implicit) root.

Metrics over queries with true class t and top-1 answer p (depth: edges below the root):

- hierarchical distance d(t, p) = edges on the tree path between t and p (0: correct);
- severity histogram: the number of mistakes at each distance;
- precision@1 at level L: the share of queries where t's and p's ancestors at depth L agree
  (a class shallower than L stands for itself); the deepest level is plain precision@1;
- same-parent share: among mistakes, the share with parent(t) == parent(p).

Without a taxonomy, `cluster_taxonomy` makes a two-level one from the k-means coarse clusters
(class -> its cluster), the fallback the cost-aware error always used. `plot_group_precision`
draws precision@1 per branch (ancestor at a level) or per cluster: where the model fails, by group.
`routing_groups` gives the routed index its coarse clusters from one level of the tree
(`IndexConfig.taxonomy`, routing by taxonomy instead of k-means).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.export.text_lines import csv_lines

ROOT = ""


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be read: `file:line: reason`."""


class Taxonomy:
    """A tree of named nodes: `parent[node]` (ROOT for top-level nodes)."""

    def __init__(self, parent: dict[str, str]) -> None:
        self.parent = dict(parent)
        self._paths: dict[str, list[str]] = {}
        for node in list(self.parent):
            self.path(node)  # fails on a cycle

    def path(self, node: str) -> list[str]:
        """[root's child, ..., node]: the ancestors of `node` from the top, itself last."""
        node = str(node)
        if node in self._paths:
            return self._paths[node]
        chain, seen = [], set()
        cur = node
        while cur != ROOT:
            if cur in seen:
                raise TaxonomyError(f"cycle in the taxonomy through {cur!r}")
            seen.add(cur)
            chain.append(cur)
            cur = self.parent.get(cur, ROOT)
        self._paths[node] = chain[::-1]
        return self._paths[node]

    def ancestor(self, node: str, level: int) -> str:
        """The ancestor at depth `level` (1 = top); a shallower node stands for itself."""
        p = self.path(node)
        return p[min(level, len(p)) - 1]

    def distance(self, a: str, b: str) -> int:
        """Edges on the tree path between `a` and `b`."""
        pa, pb = self.path(a), self.path(b)
        common = 0
        for x, y in zip(pa, pb, strict=False):
            if x != y:
                break
            common += 1
        return len(pa) + len(pb) - 2 * common

    def depth(self, nodes: Any = None) -> int:
        """The deepest depth of `nodes` (default every node)."""
        nodes = self.parent if nodes is None else nodes
        return max((len(self.path(str(n))) for n in nodes), default=1)


def read_taxonomy(path: str | Path) -> Taxonomy:
    """Read a `node,parent` file (see the module docstring); bad lines raise TaxonomyError with the line."""
    path = Path(path)
    parent: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for n, text, fields in csv_lines(path):
        if len(fields) != 2:
            raise TaxonomyError(f"{path}:{n}: expected 'class,parent', got {len(fields)} fields: {text!r}")
        node, up = fields
        if not parent and not line_of and (node.lower(), up.lower()) == ("class", "parent"):
            line_of["\0header"] = n
            continue
        if not node:
            raise TaxonomyError(f"{path}:{n}: empty node name")
        if node == up:
            raise TaxonomyError(f"{path}:{n}: {node!r} is its own parent")
        if node in parent:
            raise TaxonomyError(f"{path}:{n}: {node!r} already has parent {parent[node]!r} (line {line_of[node]})")
        parent[node], line_of[node] = up, n
    if not parent:
        raise TaxonomyError(f"{path}: no class,parent lines")
    try:
        return Taxonomy(parent)
    except TaxonomyError as e:
        raise TaxonomyError(f"{path}: {e}") from None


def cluster_taxonomy(cluster_of: dict[int, int]) -> Taxonomy:
    """The fallback: class id -> "cluster <k>" (one level of k-means coarse clusters above the classes)."""
    return Taxonomy({str(c): f"cluster {k}" for c, k in cluster_of.items()})


def taxonomy_groups(tax: Taxonomy, names: list[list[str]], level: int) -> tuple[np.ndarray, list[str]]:
    """(group of each row int64 [P], group names): the row's ancestor at depth `level`, -1 for a row none of
    whose `names` (tried in order, e.g. label then class id) is a node of `tax`."""
    if level < 1:
        raise ValueError(f"taxonomy level must be >= 1, got {level}")
    known = set(tax.parent) | set(tax.parent.values())
    group_of: dict[str, int] = {}
    out = np.full(len(names), -1, dtype=np.int64)
    for i, candidates in enumerate(names):
        node = next((n for n in candidates if n in known and n != ROOT), None)
        if node is not None:
            out[i] = group_of.setdefault(tax.ancestor(node, level), len(group_of))
    return out, list(group_of)


def routing_groups(cfg: Any, class_ids: np.ndarray, labels: dict[int, str]) -> tuple[np.ndarray | None, dict]:
    """The `groups` argument of RoutedIndex.build for `cfg` (an IndexConfig) and what the manifest records
    of them: (None, {"source": "kmeans"}) when cfg.taxonomy is None. Raises ValueError when no prototype's
    class is in the taxonomy."""
    if cfg.taxonomy is None:
        return None, {"source": "kmeans"}
    tax = read_taxonomy(cfg.taxonomy)
    ids = np.asarray(class_ids)
    names = [[labels.get(int(c), ""), str(int(c))] for c in ids]
    groups, group_names = taxonomy_groups(tax, names, cfg.taxonomy_level)
    if not (groups >= 0).any():
        raise ValueError(f"{cfg.taxonomy}: none of the {len(np.unique(ids))} classes is a node of the taxonomy")
    unplaced = np.unique(ids[groups < 0])
    routing = {"source": "taxonomy", "taxonomy": str(cfg.taxonomy), "level": cfg.taxonomy_level}
    return groups, {**routing, "groups": len(group_names), "classes_without_node": int(len(unplaced))}


def mistake_severity(true_ids: np.ndarray, predicted_ids: np.ndarray, tax: Taxonomy) -> dict[str, Any]:
    """Distances, severity histogram, precision@1 per level and the same-parent share (module docstring)."""
    t = [str(int(x)) for x in np.asarray(true_ids)]
    p = [str(int(x)) for x in np.asarray(predicted_ids)]
    if not t:
        return {"queries": 0}
    dist = np.array([tax.distance(a, b) for a, b in zip(t, p, strict=True)])
    wrong = dist > 0
    depth = tax.depth(set(t) | set(p))
    levels = {
        str(level): float(
            np.mean([tax.ancestor(a, level) == tax.ancestor(b, level) for a, b in zip(t, p, strict=True)])
        )
        for level in range(1, depth + 1)
    }
    same_parent = [tax.parent.get(a, ROOT) == tax.parent.get(b, ROOT) for a, b, w in zip(t, p, wrong, strict=True) if w]
    return {
        "queries": len(t),
        "mistakes": int(wrong.sum()),
        "mean_mistake_distance": float(dist[wrong].mean()) if wrong.any() else float("nan"),
        "severity_histogram": {str(d): int(c) for d, c in sorted(Counter(dist[wrong].tolist()).items())},
        "precision_at_1_by_level": levels,
        "same_parent_share": float(np.mean(same_parent)) if same_parent else float("nan"),
        "distances": dist,
    }


def group_precision(
    true_ids: np.ndarray, predicted_ids: np.ndarray, tax: Taxonomy, level: int = 1
) -> dict[str, tuple[float, int]]:
    """{group: (precision@1, queries)} with group = the true class's ancestor at `level`."""
    correct: dict[str, list[bool]] = {}
    for a, b in zip(np.asarray(true_ids), np.asarray(predicted_ids), strict=True):
        correct.setdefault(tax.ancestor(str(int(a)), level), []).append(int(a) == int(b))
    return {g: (float(np.mean(v)), len(v)) for g, v in correct.items()}


def plot_severity(summary: dict[str, Any], groups: dict[str, tuple[float, int]], path: Path, title: str) -> Path:
    """Two panels: the mistake severity histogram, and precision@1 per group (worst 40 groups, sorted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 2.2]})
    hist = summary.get("severity_histogram", {})
    ax1.bar([int(d) for d in hist], list(hist.values()), color="#c44e52")
    ax1.set_xlabel("tree distance of the top-1 mistake (edges)")
    ax1.set_ylabel("mistakes")
    ax1.set_title(f"mistake severity ({summary.get('mistakes', 0)} of {summary.get('queries', 0)} queries)")
    worst = sorted(groups.items(), key=lambda kv: kv[1][0])[:40]
    ax2.bar(range(len(worst)), [v[0] for _, v in worst], color="#4c72b0")
    ax2.set_xticks(range(len(worst)), [f"{g} ({v[1]})" for g, v in worst], rotation=75, ha="right", fontsize=7)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("precision@1")
    ax2.set_title(f"precision@1 by group, worst {len(worst)} of {len(groups)} (queries)")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
