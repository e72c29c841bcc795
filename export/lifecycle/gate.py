"""The quality gate: is the candidate at least as good as the serving version, within margins?

Both are measured on the same held-out queries (the catalogue's split=query rows). A rule
passes when `candidate >= serving - margin`; every rule must pass. The metrics:

- precision_at_1: share of queries whose top-1 class is the true class;
- hit_rate_at_5: share of queries with the true class among the top 5;
- search_recall: search recall@k of the routed index against exact search over the same prototypes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from megaclass.export.config import GateConfig

RULES: tuple[tuple[str, str], ...] = (
    ("precision_at_1", "precision_at_1_margin"),
    ("hit_rate_at_5", "hit_rate_at_5_margin"),
    ("search_recall", "search_recall_margin"),
)


@dataclass(frozen=True)
class Check:
    metric: str
    candidate: float
    serving: float
    margin: float

    @property
    def passed(self) -> bool:
        return self.candidate >= self.serving - self.margin - 1e-12

    def text(self) -> str:
        verdict = "ok" if self.passed else "FAILS"
        return (
            f"{self.metric}: candidate {self.candidate:.4f} vs serving {self.serving:.4f} "
            f"(allowed down to {self.serving - self.margin:.4f}): {verdict}"
        )


@dataclass(frozen=True)
class Decision:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it was refused; empty when it passed

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(data["passed"], [Check(**c) for c in data["checks"]], list(data["reasons"]))


def decide(candidate: dict[str, float], serving: dict[str, float] | None, queries: int, cfg: GateConfig) -> Decision:
    """Apply every rule of `cfg`; `serving` None (nothing serves yet) compares against zero."""
    if queries < cfg.min_queries:
        return Decision(False, [], [f"only {queries} held-out queries; the gate needs at least {cfg.min_queries}"])
    serving = serving or {}
    checks = [
        Check(m, float(candidate[m]), float(serving.get(m, 0.0)), float(getattr(cfg, margin))) for m, margin in RULES
    ]
    reasons = [c.text() for c in checks if not c.passed]
    return Decision(not reasons, checks, reasons)
