"""The scale-out run's settings are checked when made."""

from __future__ import annotations

import pytest

from megaclass.loadtest.scaleout.config import ScaleoutConfig


def test_config_bounds_are_checked():
    with pytest.raises(ValueError):
        ScaleoutConfig(replicas=1, failover=True)
    with pytest.raises(ValueError):
        ScaleoutConfig(phase_s=5, kill_after_s=6)
    with pytest.raises(ValueError):
        ScaleoutConfig(protocol="smtp")
