"""The nginx front: one renderer for the local run and the compose file, accepted by nginx -t."""

from __future__ import annotations

import pytest

from megaclass.loadtest.scaleout.nginx import (
    LoadBalancerConfig,
    Replica,
    check_config,
    compose_nginx_config,
    compose_replica_names,
    render_nginx_config,
)

from .conftest import DOCKER, nginx_available, require

REPLICAS = [Replica("127.0.0.1", 9101, 9100), Replica("127.0.0.1", 9201, 9200), Replica("127.0.0.1", 9301, 9300)]


def test_every_replica_is_an_upstream_of_both_protocols():
    text = render_nginx_config(REPLICAS, LoadBalancerConfig(max_fails=2, fail_timeout_s=7))
    for r in REPLICAS:
        assert f"server {r.host}:{r.grpc_port} max_fails=2 fail_timeout=7s;" in text
        assert f"server {r.host}:{r.http_port} max_fails=2 fail_timeout=7s;" in text
    assert "grpc_pass grpc://triton_grpc;" in text and "proxy_pass http://triton_http;" in text
    assert "listen 127.0.0.1:8001 http2;" in text


def test_failover_and_timeouts_are_bounded():
    lb = LoadBalancerConfig(next_upstream_tries=2, next_upstream_timeout_s=4, read_timeout_s=9, connect_timeout_s=1)
    text = render_nginx_config(REPLICAS, lb)
    for proto in ("grpc", "proxy"):
        assert f"{proto}_next_upstream error timeout http_502 http_503 http_504 non_idempotent;" in text
        assert f"{proto}_next_upstream_tries 2;" in text
        assert f"{proto}_next_upstream_timeout 4s;" in text
        assert f"{proto}_read_timeout 9s;" in text
        assert f"{proto}_connect_timeout 1s;" in text
    assert "client_max_body_size 64m;" in text  # nginx's 1m default would refuse large batches


def test_no_replica_is_refused():
    with pytest.raises(ValueError):
        render_nginx_config([])


def test_nginx_accepts_the_local_configuration(tmp_path):
    require(nginx_available(), "nginx is not installed (Debian package nginx)")
    lb = LoadBalancerConfig(
        pid_file=str(tmp_path / "nginx.pid"), temp_dir=str(tmp_path), access_log=str(tmp_path / "a.log")
    )
    check_config(render_nginx_config(REPLICAS, lb), tmp_path)


def test_nginx_rejects_a_broken_configuration(tmp_path):
    require(nginx_available(), "nginx is not installed (Debian package nginx)")
    from megaclass.loadtest.scaleout.nginx import NginxError

    lb = LoadBalancerConfig(pid_file=str(tmp_path / "nginx.pid"), temp_dir=str(tmp_path))
    broken = render_nginx_config(REPLICAS, lb).replace("grpc_next_upstream_tries", "grpc_next_upstream_trys")
    with pytest.raises(NginxError, match="grpc_next_upstream_trys"):
        check_config(broken, tmp_path)


def test_compose_front_is_the_generated_configuration():
    committed = (DOCKER / "nginx" / "nginx.conf").read_text()
    assert committed == compose_nginx_config(), (
        "docker/nginx/nginx.conf is stale: python -m megaclass.loadtest.scaleout.nginx > docker/nginx/nginx.conf"
    )
    for name in compose_replica_names():
        assert f"server {name}:8001 " in committed and f"server {name}:8000 " in committed
