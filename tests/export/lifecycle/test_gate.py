"""The quality gate: every rule, its margin, and the refusal reasons."""

from __future__ import annotations

import pytest

from megaclass.export.config import GateConfig
from megaclass.export.lifecycle.gate import RULES, Decision, decide

SERVING = {"precision_at_1": 0.90, "hit_rate_at_5": 0.95, "search_recall": 0.99}


def test_equal_or_better_passes_and_within_the_margin_passes():
    assert decide(dict(SERVING), SERVING, 100, GateConfig()).passed
    slightly_worse = {k: v - 0.01 for k, v in SERVING.items()}
    assert decide(slightly_worse, SERVING, 100, GateConfig()).passed  # margins 0.02 / 0.02 / 0.05


@pytest.mark.parametrize("metric, margin", RULES)
def test_each_rule_refuses_a_drop_beyond_its_margin(metric, margin):
    cfg = GateConfig()
    worse = dict(SERVING, **{metric: SERVING[metric] - getattr(cfg, margin) - 0.001})
    d = decide(worse, SERVING, 100, cfg)
    assert not d.passed and len(d.reasons) == 1 and d.reasons[0].startswith(metric) and "FAILS" in d.reasons[0]
    assert decide(worse, SERVING, 100, GateConfig(**{margin: getattr(cfg, margin) + 0.01})).passed


def test_too_few_queries_is_refused_and_no_serving_version_compares_with_zero():
    d = decide(dict(SERVING), SERVING, 3, GateConfig(min_queries=10))
    assert not d.passed and "at least 10" in d.reasons[0]
    assert decide({k: 0.0 for k in SERVING}, None, 5, GateConfig()).passed


def test_the_decision_round_trips_through_json():
    d = decide({**SERVING, "precision_at_1": 0.1}, SERVING, 100, GateConfig())
    assert Decision.from_dict(d.as_dict()) == d
