"""Class aggregation (aggregation.py) against a loop, on every path: plain Python, packed keys, general."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.python_backend.index.aggregation import aggregate_classes


@pytest.mark.parametrize("m", [1, 5, 30, 200])  # plain Python (up to 128 candidates), packed keys, general
@pytest.mark.parametrize("first_id", [0, 3_000_000_000, 1 << 40])  # packed keys (ids < 2**32) and the general path
def test_aggregate_classes_matches_loop(m: int, first_id: int) -> None:
    rng = np.random.default_rng(3)
    s = rng.standard_normal((20, m)).astype(np.float32)
    s[0, :2] = np.inf * np.array([-1, 1]) if m > 1 else s[0, :1]
    s[1, : m // 2] = 0.5  # ties: broken by class id
    s[2, : m // 2] = np.where(np.arange(m // 2) % 2, -0.0, 0.0)  # signed zeros are one score
    s[3, : m // 3] = -3.5  # negative scores keep their order
    c = rng.integers(-1, 8, (20, m))
    c = np.where(c >= 0, c + first_id, -1)
    got_c, got_s = aggregate_classes(s, c, 5)
    for i in range(20):
        best: dict[int, float] = {}
        for cc, ss in zip(c[i], s[i], strict=True):
            if cc >= 0 and np.isfinite(ss):
                best[int(cc)] = max(best.get(int(cc), -np.inf), float(ss))
        top = sorted(best.items(), key=lambda t: (-t[1], t[0]))[:5]
        assert got_c[i, : len(top)].tolist() == [k for k, _ in top]
        np.testing.assert_allclose(got_s[i, : len(top)], [v for _, v in top])
        assert (got_c[i, len(top) :] == -1).all()
