"""The images: Dockerfiles read instruction by instruction (no engine here: nothing is built),
and the entrypoint and health check run for real against the bundled Triton 2.51."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import import_from_install, regular_install
from tests.docker.conftest import DOCKER, ROOT

# NGC release of the Triton image for each Triton version (NVIDIA's support matrix).
NGC_RELEASE = {"2.51.0": "24.10"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list] = {}
    current = None
    for op, rest in instructions(dockerfile):
        if op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            current = m.group(2) or m.group(1)
            result[current] = [(op, rest)]
        elif current:
            result[current].append((op, rest))
    return result


def dockerignore_allows(dockerfile: Path, path: str) -> bool:
    """Whether `path` reaches the build context under <Dockerfile>.dockerignore (last match wins)."""
    allowed = True
    for raw in Path(f"{dockerfile}.dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]


def test_gpu_image_is_ngc_triton_of_the_same_version_as_the_bundled_server():
    (op, base), *_ = instructions(DOCKER / "Dockerfile")
    arg = re.search(r"ARG TRITON_IMAGE=(\S+)", (DOCKER / "Dockerfile").read_text()).group(1)
    assert arg == f"nvcr.io/nvidia/tritonserver:{NGC_RELEASE['2.51.0']}-py3"
    assert stages(DOCKER / "Dockerfile")["serve"][0][1].startswith("${TRITON_IMAGE}")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_non_root_with_a_health_check(dockerfile):
    serve = stages(dockerfile)["serve"]
    ops = dict((op, rest) for op, rest in serve)  # the last of each instruction
    assert re.fullmatch(r"\$\{MEGACLASS_UID\}:\$\{MEGACLASS_UID\}", ops["USER"])
    assert int(re.search(r"ARG MEGACLASS_UID=(\d+)", dockerfile.read_text()).group(1)) >= 1000
    assert "/opt/megaclass/healthcheck.py" in ops["HEALTHCHECK"] and "--start-period=" in ops["HEALTHCHECK"]
    assert set(ops["EXPOSE"].split()) == {"8000", "8001", "8002"}
    assert "baked" in stages(dockerfile), "a target with the model repository baked in"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_builds_the_native_kernels_at_build_time_and_ships_their_source(dockerfile):
    serve = stages(dockerfile)["serve"]
    runs = " ".join(rest for op, rest in serve if op == "RUN")
    assert re.search(r"apt-get install [^&]*\bg\+\+", runs), "a CPU of another kind rebuilds the index kernel"
    assert "-m megaclass.python_backend.index.native.build" in runs  # at image build time
    assert "preload_library" in runs  # the library that hands the admin key to tritonserver
    envs = [rest for op, rest in serve if op == "ENV"]
    build_at = next(i for i, (op, rest) in enumerate(serve) if op == "RUN" and "native.build" in rest)
    env_at = next(i for i, (op, rest) in enumerate(serve) if op == "ENV" and "MEGACLASS_NATIVE_DIR" in rest)
    assert env_at < build_at and any("MEGACLASS_NATIVE_DIR=/opt/megaclass/native" in e for e in envs)
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    assert '"megaclass.python_backend.index.native" = ["*.cpp"]' in pyproject  # sources installed
    assert '"megaclass.python_backend.server" = ["*.cpp"]' in pyproject


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_everything_copied_exists_and_reaches_the_build_context(dockerfile):
    for stage in stages(dockerfile).values():
        for op, rest in stage:
            if op != "COPY":
                continue
            *sources, _dest = [a for a in rest.split() if not a.startswith("--")]
            for src in sources:
                if src != "model_repository":  # generated; the baked target needs it built first
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repository"
                assert dockerignore_allows(dockerfile, src), f"{dockerfile.name}: {src} is excluded by .dockerignore"


OFFLINE = ("export", "clients", "loadtest")  # the folders the serving images leave out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_serving_image_copies_no_offline_folder(dockerfile):
    """The images install python_backend/ alone: no COPY of export/, clients/ or loadtest/, and the
    build context does not even hold them."""
    for stage in stages(dockerfile).values():
        for op, rest in stage:
            if op == "COPY":
                *sources, _dest = [a for a in rest.split() if not a.startswith("--")]
                wrong = [s for s in sources if s.strip("/").split("/")[0] in OFFLINE]
                assert not wrong, f"{dockerfile.name}: COPY {rest}"
    assert not any(dockerignore_allows(dockerfile, folder) for folder in OFFLINE)
    assert dockerignore_allows(dockerfile, "python_backend")


def test_cpu_image_starts_the_server_launcher():
    ops = dict((op, rest) for op, rest in stages(DOCKER / "Dockerfile.cpu")["serve"])
    entrypoint = json.loads(ops["ENTRYPOINT"])
    assert entrypoint[:3] == ["python", "-m", "megaclass.python_backend.server"]
    assert entrypoint[3:] == ["--repository", "/models", "--host", "0.0.0.0"]


def test_what_the_images_install_imports_without_the_offline_folders(tmp_path):
    """A regular install of python_backend/ alone (what the images COPY): every serving module
    and the server launcher import from it."""
    site = regular_install(["python_backend"], tmp_path)
    assert not (site / "megaclass" / "export").exists()
    names = [
        "megaclass." + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in sorted((ROOT / "python_backend").rglob("*.py"))
        if "models" not in p.relative_to(ROOT).parts[1:2]  # Triton's model files import its utils
    ]
    assert "megaclass.python_backend.server.__main__" in names
    failed = import_from_install(site, names)
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_gpu_requirements_are_pinned_and_keep_numpy_below_2():
    lines = [ln.split("#")[0].strip() for ln in (DOCKER / "requirements-gpu.txt").read_text().splitlines()]
    pins = dict(ln.split("==") for ln in lines if ln)
    assert all(pins.values()), "every package pinned with =="
    assert {"faiss-gpu-cu12", "onnxruntime-gpu", "numpy"} <= pins.keys()
    assert int(pins["numpy"].split(".")[0]) < 2
    assert "torch" not in pins and "faiss-cpu" not in pins and "onnxruntime" not in pins


def test_cpu_requirements_are_pinned_by_the_lock():
    lock = {ln.split("==")[0].lower() for ln in (ROOT / "requirements.lock").read_text().split() if "==" in ln}
    wanted = [
        ln.strip()
        for ln in (DOCKER / "requirements-cpu.in").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert wanted and all(name.lower() in lock for name in wanted)


def test_cpu_image_python_has_a_triton_stub():
    from megaclass.python_backend.server.triton_server import locate_triton

    (op, base), *_ = instructions(DOCKER / "Dockerfile.cpu")
    version = re.match(r"python:(\d+\.\d+)", base).group(1)
    stubs = locate_triton().stub.parents[1]
    assert (stubs / version / "triton_python_backend_stub").exists()


# --- the entrypoint and the health check, for real ----------------------------------------------
def healthcheck(url: str, *models: str) -> int:
    args = [a for m in models for a in ("--model", m)]
    cmd = [sys.executable, str(DOCKER / "healthcheck.py"), "--url", url, "--timeout", "1", *args]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode


def test_healthcheck_fails_when_nothing_listens():
    from megaclass.python_backend.server.triton_server import free_port

    assert healthcheck(f"http://127.0.0.1:{free_port()}") == 1


@pytest.mark.integration
def test_entrypoint_serves_the_repository_and_stops_on_sigterm(tiny_repo, tmp_path):
    """docker/entrypoint.sh with every flag set, run with the bundled tritonserver (Triton 2.51 =
    NGC 24.10): the flags are accepted, the health check turns ready, SIGTERM stops it cleanly."""
    from megaclass.python_backend.server.triton_server import (
        free_port,
        locate_triton,
        prepare_backend_dir,
        server_environment,
    )

    install = locate_triton()
    env = server_environment(install)
    http, grpc, metrics = free_port(), free_port(), free_port()
    env.update(
        TRITONSERVER=str(install.binary),
        BACKEND_DIRECTORY=str(prepare_backend_dir(install, tmp_path)),
        MODEL_REPOSITORY=str(tiny_repo),
        BIND_ADDRESS="127.0.0.1",
        HTTP_PORT=str(http),
        GRPC_PORT=str(grpc),
        METRICS_PORT=str(metrics),
        CUDA_MEMORY_POOL_BYTE_SIZE="67108864",
        PINNED_MEMORY_POOL_BYTE_SIZE="67108864",
        EXIT_TIMEOUT_SECS="10",
    )
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(DOCKER / "entrypoint.sh")], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 90
        while healthcheck(url, "classify", "retriever", "encoder") != 0:
            assert proc.poll() is None, f"entrypoint exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready in 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        with urllib.request.urlopen(f"{url}/v2", timeout=5) as r:
            version = json.load(r)["version"]
        assert version in NGC_RELEASE, f"bundled Triton {version}: which NGC image matches it?"
        assert f"tritonserver:{NGC_RELEASE[version]}-py3" in (DOCKER / "Dockerfile").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_server_launcher_serves_the_repository_and_stops_on_sigterm(tiny_repo, tmp_path):
    """The CPU image's entrypoint, `python -m megaclass.python_backend.server`: ready, then a clean stop."""
    from megaclass.python_backend.server.triton_server import free_port

    http, grpc, metrics = free_port(), free_port(), free_port()
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    cmd = [sys.executable, "-m", "megaclass.python_backend.server", "--repository", str(tiny_repo), *ports]
    log = tmp_path / "launcher.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while healthcheck(f"http://127.0.0.1:{http}", "classify") != 0 or "Triton is ready" not in log.read_text():
            assert proc.poll() is None, f"the launcher exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready in 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "server stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_entrypoint_refuses_an_empty_repository(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MODEL_REPOSITORY": str(tmp_path), "TRITONSERVER": "/bin/false"}
    proc = subprocess.run([str(DOCKER / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64 and "missing or empty" in proc.stderr


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3"])
def test_entrypoint_refuses_exposed_explicit_mode_without_a_key(tmp_path, address):
    (tmp_path / "repo" / "m").mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "MODEL_REPOSITORY": str(tmp_path / "repo"), "TRITONSERVER": "/bin/true",
           "MODEL_CONTROL_MODE": "explicit", "BIND_ADDRESS": address}  # fmt: skip
    proc = subprocess.run([str(DOCKER / "entrypoint.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78 and "refusing to serve explicit model control" in proc.stderr
    for more in ({"MEGACLASS_INSECURE": "1"}, {"BIND_ADDRESS": "127.0.0.1"}):
        ok = subprocess.run([str(DOCKER / "entrypoint.sh")], env={**env, **more}, capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr  # /bin/true "served"
    missing = {**env, "MEGACLASS_ADMIN_KEY_FILE": str(tmp_path / "no-such-secret")}
    proc = subprocess.run([str(DOCKER / "entrypoint.sh")], env=missing, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78 and "missing or empty" in proc.stderr


@pytest.mark.integration
def test_entrypoint_takes_the_key_from_a_secret_file_and_keeps_it_off_proc(tiny_repo, tmp_path):
    """With MEGACLASS_ADMIN_KEY_FILE, tritonserver (the entrypoint's pid, exec'd) restricts model
    control to the key, while /proc/<pid>/cmdline shows a placeholder and no environment holds the key."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from megaclass.python_backend.server.triton_server import (
        admin_headers,
        free_port,
        locate_triton,
        prepare_backend_dir,
        server_environment,
    )

    install = locate_triton()
    secret = tmp_path / "admin-key"
    secret.write_text("entrypoint-secret-key\n")
    http = free_port()
    env = server_environment(install)
    env.update(
        TRITONSERVER=str(install.binary), BACKEND_DIRECTORY=str(prepare_backend_dir(install, tmp_path)),
        MODEL_REPOSITORY=str(tiny_repo), BIND_ADDRESS="127.0.0.1", HTTP_PORT=str(http), GRPC_PORT=str(free_port()),
        METRICS_PORT=str(free_port()), MODEL_CONTROL_MODE="explicit", MEGACLASS_ADMIN_KEY_FILE=str(secret),
        PYTHON=sys.executable, EXIT_TIMEOUT_SECS="10",
    )  # fmt: skip
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(DOCKER / "entrypoint.sh"), "--load-model=*"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while healthcheck(f"http://127.0.0.1:{http}", "classify") != 0:
            assert proc.poll() is None, f"entrypoint exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready in 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"tritonserver" in cmdline and b"@MEGACLASS_ADMIN_KEY@" in cmdline
        assert b"entrypoint-secret-key" not in cmdline
        for pid in [
            proc.pid,
            *(int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()),
        ]:
            assert b"entrypoint-secret-key" not in Path(f"/proc/{pid}/environ").read_bytes()
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        with pytest.raises(InferenceServerException, match="megaclass-admin-key"):
            client.get_model_repository_index()
        assert client.get_model_repository_index(headers=admin_headers("entrypoint-secret-key", "http"))
        client.close()  # an open keep-alive connection holds Triton's exit timeout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
