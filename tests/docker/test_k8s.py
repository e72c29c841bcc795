"""docker/k8s: every manifest parses, passes the Kubernetes schemas offline, and says what matters.

The schema check is kubernetes-validate (PyPI; it ships the Kubernetes JSON schemas, so it runs
offline), strict (unknown fields are errors), against the oldest and newest Kubernetes it knows.
kubeconform is on neither PyPI nor Debian, so it is not used. The ServiceMonitor is a CRD
without a bundled schema: it gets the field checks only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.docker.conftest import DOCKER

K8S = DOCKER / "k8s"
SCHEMA_VERSIONS = ("1.25.0", "1.37.0")


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def one(name: str, kind: str) -> dict:
    (doc,) = [d for d in load(name) if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def test_kustomization_lists_every_plain_manifest(kustomization):
    not_resources = {"kustomization.yaml", "prometheus-adapter-values.yaml", "servicemonitor.yaml"}
    on_disk = {p.name for p in K8S.glob("*.yaml")} - not_resources
    assert set(kustomization["resources"]) == on_disk


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_manifests_pass_the_kubernetes_schemas(kustomization, version):
    import kubernetes_validate

    for name in kustomization["resources"]:
        for doc in load(name):
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field():
    import kubernetes_validate

    pdb = one("pdb.yaml", "PodDisruptionBudget")
    pdb["spec"]["maxUnavailabel"] = pdb["spec"].pop("maxUnavailable")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, SCHEMA_VERSIONS[-1], strict=True)


@pytest.fixture(scope="module")
def deployment() -> dict:
    return one("deployment.yaml", "Deployment")


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_probes_use_tritons_health_endpoints(deployment):
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", 8000)
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "index loading needs minutes"


def test_shm_resources_and_security(deployment):
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["readOnly"] is True
    res = c["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
    assert "memory" in res["requests"] and "memory" in res["limits"] and "cpu" in res["requests"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    uid = re.search(r"ARG MEGACLASS_UID=(\d+)", (DOCKER / "Dockerfile").read_text()).group(1)
    assert spec["securityContext"]["runAsUser"] == int(uid), "the image's user"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_rollout_and_shutdown_drop_no_request(deployment):
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {e["name"]: e.get("value") for e in c["env"]}
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + int(env["EXIT_TIMEOUT_SECS"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8002"


def test_services_select_the_pods(deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = {d["metadata"]["name"]: d for d in load("service.yaml")}
    for s in services.values():
        assert s["spec"]["selector"].items() <= labels.items()
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    assert headless and {p["port"] for p in headless[0]["spec"]["ports"]} == {8001}


def test_hpa_scales_the_deployment_on_queue_time(deployment):
    hpa = one("hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    query = rule["metricsQuery"]
    assert "nv_inference_queue_duration_us" in query and "nv_inference_request_success" in query
    assert (
        query.index("nv_inference_queue_duration_us") < query.index("/") < query.index("nv_inference_request_success")
    )
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # scale-down is slower than scale-up: a new replica takes minutes to load its index
    b = hpa["spec"]["behavior"]
    assert b["scaleDown"]["stabilizationWindowSeconds"] > b["scaleUp"]["stabilizationWindowSeconds"]


def test_pdb_keeps_a_replica_up(deployment):
    pdb = one("pdb.yaml", "PodDisruptionBudget")
    hpa = one("hpa.yaml", "HorizontalPodAutoscaler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) < hpa["spec"]["minReplicas"]


def test_servicemonitor_scrapes_the_metrics_port():
    sm = one("servicemonitor.yaml", "ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    svc = [s for s in load("service.yaml") if s["spec"].get("clusterIP") != "None"][0]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}


def test_image_is_set_by_kustomize(kustomization, deployment):
    images = {i["name"] for i in kustomization["images"]}
    assert container(deployment)["image"] in images
    assert Path(K8S / "kustomization.yaml").read_text().count("newName") == 1


def test_the_admin_key_comes_from_a_secret_file(deployment):
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    env = {e["name"]: e for e in c["env"]}
    assert "MEGACLASS_ADMIN_KEY" not in env  # never a value in the manifest or the environment
    key_file = Path(env["MEGACLASS_ADMIN_KEY_FILE"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == "megaclass-admin-key" and volume["secret"]["defaultMode"] == 0o400
