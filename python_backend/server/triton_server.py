"""Start and stop the real `tritonserver` that ships in the nvidia-pytriton wheel.

The wheel carries NVIDIA's Triton 2.51 binary, the Python backend and a backend stub per
Python version. To run our Python-backend models with this project's interpreter the
launcher (1) lays out a backend directory holding the Python backend and the stub for the
running Python, (2) puts the wheel's bundled libraries and this interpreter's libpython on
`LD_LIBRARY_PATH`, (3) puts this interpreter's `bin/` first on `PATH`, and (4) waits until
the server and every model are ready, quoting the server's own log when something fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megaclass.python_backend.server.security import (
    SecurityError,
    check_exposure,
    key_pipe,
    restricted_api_args,
    scrub_environment,
)

ADMIN_HEADER = "megaclass-admin-key"
RESTRICTED_APIS = ("model-repository", "trace", "logging")


def admin_headers(admin_key: str, protocol: str) -> dict[str, str]:
    """The header that unlocks the restricted APIs (gRPC prefixes it with `triton-grpc-protocol-`)."""
    name = ADMIN_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}"
    return {name: admin_key}


class TritonError(RuntimeError):
    """The server could not be started or a model failed to load (message quotes the server)."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's pieces are."""

    binary: Path
    backends_dir: Path
    stub: Path
    libs_dir: Path


def locate_triton() -> TritonInstall:
    """Find tritonserver, the Python backend and the stub for this Python in nvidia-pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("nvidia-pytriton is not installed: run `make setup` (pip install nvidia-pytriton==0.7.0)")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        backends_dir=root / "backends",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs_dir=root.parent.parent / "nvidia_pytriton.libs",
    )
    for what, path in [("tritonserver binary", install.binary), (f"Python {version} backend stub", install.stub)]:
        if not path.exists():
            raise TritonError(f"{what} not found at {path}; is nvidia-pytriton==0.7.0 installed for this Python?")
    return install


def prepare_backend_dir(install: TritonInstall, work_dir: Path) -> Path:
    """Copy the backends with the stub for the running Python into `work_dir/backends`."""
    target = work_dir / "backends"
    if not (target / "python" / "triton_python_backend_stub").exists():
        tmp = work_dir / f".backends.{uuid.uuid4().hex}"  # unique per call: threads may race
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(install.backends_dir, tmp, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(install.stub, tmp / "python" / "triton_python_backend_stub")
        try:
            tmp.rename(target)
        except OSError:  # another launcher won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def server_environment(install: TritonInstall) -> dict[str, str]:
    """Environment for tritonserver so the stub runs this interpreter and its packages (never the admin key)."""
    env = scrub_environment(os.environ)
    lib_dirs = [str(install.libs_dir)]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and any(Path(libdir).glob("libpython3*.so*")):
        lib_dirs.insert(0, libdir)
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(lib_dirs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # Each model instance is its own process: keep BLAS and OpenMP from oversubscribing.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PYTHONUTF8", "1")  # labels are Unicode whatever the locale
    return env


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on (host, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: deque = deque(maxlen=256)  # ports free_port returned lately (the kernel may offer one again)
_handed_out_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that is free now, and not one this process was given lately (three calls
    in a row for HTTP, gRPC and metrics must not get the same port twice)."""
    with _handed_out_lock:
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                break
        _handed_out.append(port)
        return port


class ServerUrls:
    """The client URLs of a server with `host`, `http_port`, `grpc_port` and `metrics_port`
    (tritonserver itself, or the validating front before it: guard/launch.py)."""

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


@dataclass
class TritonServer(ServerUrls):
    """A running tritonserver process; use `start_server` to get one."""

    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    model_repository: Path
    log_path: Path
    _log_tail: deque = field(default_factory=lambda: deque(maxlen=400))
    command: list[str] = field(default_factory=list)  # how it was started: `restart` runs it again
    env: dict[str, str] | None = None
    models: tuple[str, ...] = ()  # the models that must be ready
    ready_timeout_s: float = 180.0
    watchdog: object | None = None  # StubWatchdog (watchdog.py) when started with one
    admin_key: str | None = field(default=None, repr=False)  # passed by pipe, never on the command line
    stopping: bool = False
    shm_regions: set[str] = field(default_factory=set)  # the stubs' shared-memory regions seen
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def log_tail(self, lines: int = 40) -> str:
        return "".join(list(self._log_tail)[-lines:])

    def errors_in_log(self) -> list[str]:
        """Server log lines that report an error (E-prefixed glog lines, failed loads)."""
        return [ln.rstrip() for ln in self._log_tail if ln.startswith("E") or "failed to load" in ln]

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, SIGKILL if it does not exit; returns the exit code."""
        self.stopping = True
        if self.watchdog is not None:
            self.watchdog.stop()
        with self._lock:
            self._terminate(timeout)
        return self.process.returncode

    def _terminate(self, timeout: float) -> None:
        if self.process.poll() is None:
            self.note_stub_regions()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._unlink_stub_regions()

    def note_stub_regions(self) -> None:
        """Remember the shared-memory regions of the server's live Python-backend stubs."""
        from megaclass.python_backend.server.watchdog import stub_shm_region

        try:
            import psutil

            children = psutil.Process(self.process.pid).children()
        except Exception:  # psutil missing, or the server already gone
            return
        for child in children:
            with contextlib.suppress(Exception):  # a child that exits meanwhile
                if region := stub_shm_region(child.cmdline()):
                    self.shm_regions.add(region)

    def _unlink_stub_regions(self) -> None:
        """Remove what a killed server (or a dead stub's instance) left in /dev/shm."""
        for region in self.shm_regions:
            with contextlib.suppress(OSError):
                (Path("/dev/shm") / region).unlink(missing_ok=True)
        self.shm_regions.clear()

    def _spawn(self) -> None:
        """Start `command` (again) with its log pumped into `log_path` and the tail."""
        log_file = open(self.log_path, "a")  # noqa: SIM115 - closed by the pump thread's owner at exit
        self._log_tail.clear()
        self.process = _popen(self.command, self.env, self.admin_key)
        args = (self.process.stdout, log_file, self._log_tail, False)
        threading.Thread(target=_pump_log, args=args, daemon=True).start()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the server if it still runs, start the same command again, wait until ready."""
        if not self.command:
            raise TritonError("this server was not started by start_server; it cannot be restarted")
        with self._lock:
            if self.stopping:
                return
            self._terminate(timeout)
            self._spawn()
        wait_until_ready(self, self.models, self.ready_timeout_s)

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def _pump_log(stream, log_file, tail: deque, echo: bool) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        tail.append(line)
        log_file.write(line)
        log_file.flush()
        if echo:
            sys.stderr.write(line)
    stream.close()


def start_server(
    model_repository: Path,
    *,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    models: Sequence[str] = (),
    explicit: bool = False,
    work_dir: Path | None = None,
    ready_timeout_s: float = 180.0,
    extra_args: Sequence[str] = (),
    shm_default_byte_size: int | None = None,
    admin_key: str | None = None,
    echo_log: bool = False,
    watchdog: bool = True,
    insecure: bool = False,
) -> TritonServer:
    """Start tritonserver on `model_repository` and wait until it and every model are ready.

    `models` names the models that must be ready (all in the repository when empty). With
    `explicit=True` the server runs with explicit model control and loads just `models`.
    With `admin_key`, the model-repository (load/unload), trace and logging APIs require the
    header `ADMIN_HEADER: <admin_key>` on both protocols, so a client that may classify cannot
    replace models; explicit control on a non-loopback `host` without a key is refused unless
    `insecure` (security.py, which also keeps the key off the command line and the environment). Raises `TritonError` quoting the server's log when it exits or a model
    fails to load. With `watchdog`, a Python-backend stub that dies is brought back without
    manual action (its model reloaded in explicit mode, else the server restarted; see
    `watchdog.py`), and so is a server process that exits on its own.
    """
    model_repository = Path(model_repository).resolve()
    try:
        check_exposure(host, explicit, admin_key, insecure)
    except SecurityError as exc:
        raise TritonError(str(exc)) from None
    if not model_repository.is_dir():
        raise TritonError(f"model repository {model_repository} does not exist")
    for name, port in [("HTTP", http_port), ("gRPC", grpc_port), ("metrics", metrics_port)]:
        if not port_is_free(host, port):
            raise TritonError(
                f"{name} port {port} on {host} is already in use; choose another with --{name.lower()}-port"
            )
    install = locate_triton()
    work_dir = Path(work_dir or Path(tempfile.gettempdir()) / "megaclass-triton")
    work_dir.mkdir(parents=True, exist_ok=True)
    backend_dir = prepare_backend_dir(install, work_dir)
    if not models:
        models = sorted(p.parent.name for p in model_repository.glob("*/config.pbtxt"))
    cmd = server_command(
        install, model_repository, backend_dir, host=host, ports=(http_port, grpc_port, metrics_port),
        models=models, explicit=explicit, shm_default_byte_size=shm_default_byte_size, admin_key=admin_key,
    ) + list(extra_args)  # fmt: skip
    log_path = work_dir / f"tritonserver-{http_port}.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - closed by the pump thread's owner at exit
    proc = _popen(cmd, server_environment(install), admin_key)
    server = TritonServer(
        proc, host, http_port, grpc_port, metrics_port, model_repository, log_path,
        command=cmd, env=server_environment(install), models=tuple(models), ready_timeout_s=ready_timeout_s,
        admin_key=admin_key,
    )  # fmt: skip
    threading.Thread(target=_pump_log, args=(proc.stdout, log_file, server._log_tail, echo_log), daemon=True).start()
    try:
        wait_until_ready(server, models, ready_timeout_s)
    except BaseException:
        server.stop(timeout=10)
        raise
    if watchdog:
        from megaclass.python_backend.server.watchdog import StubWatchdog

        server.watchdog = StubWatchdog(server, explicit=explicit, admin_key=admin_key).start()
    return server


def server_command(
    install: TritonInstall,
    model_repository: Path,
    backend_dir: Path,
    *,
    host: str,
    ports: tuple[int, int, int],
    models: Sequence[str],
    explicit: bool,
    shm_default_byte_size: int | None,
    admin_key: str | None,
) -> list[str]:
    """The tritonserver command line; `ports` are HTTP, gRPC and metrics."""
    http_port, grpc_port, metrics_port = ports
    cmd = [
        str(install.binary),
        f"--model-repository={model_repository}",
        f"--backend-directory={backend_dir}",
        f"--http-address={host}",
        f"--grpc-address={host}",
        f"--metrics-address={host}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--strict-readiness=true",
        "--exit-on-error=false",
        "--log-verbose=0",
    ]
    if shm_default_byte_size:
        cmd.append(f"--backend-config=python,shm-default-byte-size={shm_default_byte_size}")
    if admin_key:  # a placeholder: the key itself goes through a pipe (`_popen`, security.py)
        cmd += restricted_api_args(RESTRICTED_APIS, ADMIN_HEADER)
    if explicit:
        cmd.append("--model-control-mode=explicit")
        cmd += [f"--load-model={m}" for m in models]
    return cmd


def _popen(cmd: list[str], env: dict[str, str] | None, admin_key: str | None) -> subprocess.Popen:
    """Start tritonserver; with `admin_key`, hand the key over through a pipe (see security.py)."""
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    if not admin_key:
        return subprocess.Popen(cmd, env=env, **popen)
    try:
        key_env, read_end = key_pipe(admin_key, env if env is not None else os.environ)
    except SecurityError as exc:
        raise TritonError(str(exc)) from None
    try:
        return subprocess.Popen(cmd, env=key_env, pass_fds=(read_end,), **popen)
    finally:
        os.close(read_end)


def wait_until_ready(server: TritonServer, models: Sequence[str], timeout_s: float) -> None:
    """Poll the HTTP health endpoints until the server and `models` are ready."""
    base = f"http://{server.http_url}"
    deadline = time.monotonic() + timeout_s
    pending = list(models)
    while time.monotonic() < deadline:
        if not server.is_running():
            time.sleep(0.2)  # let the log pump catch the last lines
            raise TritonError(
                f"tritonserver exited with code {server.process.returncode} before it was ready. "
                f"Server log (last lines):\n{server.log_tail()}"
            )
        failed = [ln for ln in server.errors_in_log() if any(f"'{m}'" in ln or f'"{m}"' in ln for m in pending)]
        if failed:
            raise TritonError("a model failed to load; the server says:\n" + "\n".join(failed[-10:]))
        if _http_status(f"{base}/v2/health/live") == 200:
            pending = [m for m in pending if _http_status(f"{base}/v2/models/{m}/ready") != 200]
            if not pending and _http_status(f"{base}/v2/health/ready") == 200:
                return
        time.sleep(0.25)
    raise TritonError(
        f"server or model(s) {pending} not ready after {timeout_s:.0f}s. Server log (last lines):\n{server.log_tail()}"
    )


@contextlib.contextmanager
def running_server(model_repository: Path, **kwargs) -> Iterator[TritonServer]:
    """`with running_server(repo) as server:` — started, ready, and stopped afterwards."""
    server = start_server(model_repository, **kwargs)
    try:
        yield server
    finally:
        server.stop()
