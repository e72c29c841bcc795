"""Bring a tritonserver back without manual action when a Python-backend stub process dies.

Measured with the bundled Triton 2.51 (docs/reliability.md): a stub killed under load (SIGKILL,
the OOM killer, a crash in native code) is never restarted. Its model stays READY, health says
ready, and every request routed to that instance fails after about one second with "Stub process
'<instance>' is not healthy." until the model is loaded again.

`StubWatchdog` polls the server's child processes. A stub that died stays a zombie (Triton only
reaps the stubs it stops itself, and never this one), so a zombie stub seen on two polls in a row
is a dead one; the watchdog then reloads its model through the model-control API (explicit mode;
with the admin key when that API is restricted), which starts a fresh stub beside the broken one
and switches to it.
A server without model control, one whose process exited (a stub killed while it held the lock of
its shared-memory channel can abort tritonserver: boost `lock_exception`), and one that stopped
answering /v2/health/live (seen hanging after a segfault) are restarted instead (seconds of
downtime). Restarts are capped so a crash loop does not spin forever.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
LOGGER = logging.getLogger("megaclass.server.watchdog")


class ModelRefused(RuntimeError):
    """The server answered the reload request and refused it (the model's files do not load)."""


@dataclass
class Recovery:
    """One dead stub (or server exit) and what the watchdog did about it."""

    model: str  # "" when the server process itself exited or the stub was never seen alive
    instance: str
    pid: int
    action: str  # "reload" (model-control API) or "restart" (the whole server)
    detected_at: float  # time.monotonic()
    recovered_at: float | None = None
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.detected_at


def stub_identity(cmdline: list[str]) -> tuple[str, str] | None:
    """(model, instance) of a Python-backend stub from its command line, None for anything else.

    The stub is started as `<stub> <repo>/<model>/<version>/model.py <shm region> ... <instance> <kind>`.
    """
    if not cmdline or not cmdline[0].endswith(STUB_NAME) or len(cmdline) < 3:
        return None
    model = Path(cmdline[1]).parent.parent.name
    instance = next((a for a in reversed(cmdline) if a.startswith(f"{model}_")), model)
    return model, instance


def stub_shm_region(cmdline: list[str]) -> str | None:
    """The shared-memory region (in /dev/shm) of a Python-backend stub, from its command line."""
    if stub_identity(cmdline) is None:
        return None
    return cmdline[2] if cmdline[2].startswith("triton_python_backend_shm_region") else None


class StubWatchdog:
    """Polls a `TritonServer`'s stubs every `interval_s` and recovers from dead ones (see module doc)."""

    def __init__(
        self,
        server,
        *,
        explicit: bool,
        admin_key: str | None = None,
        interval_s: float = 0.5,
        max_restarts: int = 5,
        restart_window_s: float = 600.0,
        stop_timeout_s: float = 5.0,
        unresponsive_after_s: float = 10.0,
        reload_attempts: int = 3,
        reload_retry_s: float = 2.0,
    ):
        self.server = server
        self.explicit = explicit
        self.admin_key = admin_key
        self.interval_s = interval_s
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        # A server with a dead stub waits its whole exit timeout (30 s) for that model on SIGTERM:
        # a restart does not drain, it stops the server after this long.
        self.stop_timeout_s = stop_timeout_s
        self.unresponsive_after_s = unresponsive_after_s
        self.reload_attempts, self.reload_retry_s = reload_attempts, reload_retry_s
        self._unresponsive_since: float | None = None
        self.recoveries: list[Recovery] = []
        self.paused = threading.Event()  # tests pause it to observe Triton's own behaviour
        self._known: dict[int, tuple[str, str]] = {}  # pid -> (model, instance), learnt while alive
        self._suspects: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="triton-stub-watchdog", daemon=True)

    def start(self) -> StubWatchdog:
        self.dead_stubs()  # learn the stubs now: one killed before the first poll is still known
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _log(self, message: str) -> None:
        line = f"W{time.strftime('%m%d %H:%M:%S')} megaclass watchdog] {message}\n"
        self.server._log_tail.append(line)
        LOGGER.warning(message)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.paused.is_set():
                continue
            try:
                self.check_once()
            except Exception as exc:  # the watchdog must never die of a transient /proc race
                self._log(f"check failed: {type(exc).__name__}: {exc}")

    def dead_stubs(self) -> list[tuple[int, str, str]]:
        """(pid, model, instance) of stubs that have been zombies on two polls in a row.

        A zombie never seen alive (started and killed between two polls) has no readable
        command line any more: it is reported with model "" and gets a server restart.
        """
        import psutil

        try:
            children = psutil.Process(self.server.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        zombies = set()
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    zombies.add(child.pid)
                elif child.pid not in self._known and (ident := stub_identity(cmdline := child.cmdline())):
                    self._known[child.pid] = ident
                    if region := stub_shm_region(cmdline):
                        self.server.shm_regions.add(region)
            except psutil.Error:
                continue
        dead = [(pid, *self._known.get(pid, ("", f"unknown stub {pid}"))) for pid in zombies & self._suspects]
        self._suspects = zombies
        alive = {c.pid for c in children}
        self._known = {pid: ident for pid, ident in self._known.items() if pid in alive}
        return dead

    def check_once(self) -> None:
        """One poll: restart an exited server, reload the models of dead stubs."""
        if self._stop.is_set() or self.server.stopping:
            return
        if not self.server.is_running():
            self._recover(Recovery("", "tritonserver", self.server.process.pid, "restart", time.monotonic()))
            return
        if not self._live():
            self._recover(Recovery("", "tritonserver", self.server.process.pid, "restart", time.monotonic()))
            return
        for pid, model, instance in self.dead_stubs():
            if any(r.pid == pid for r in self.recoveries):
                continue  # already handled; the reload reaps it
            self._suspects.discard(pid)
            action = "reload" if self.explicit and model else "restart"
            self._recover(Recovery(model, instance, pid, action, time.monotonic()))

    def _live(self) -> bool:
        """False once the server's process runs but has not answered /v2/health/live for
        `unresponsive_after_s` (measured: after a segfault, tritonserver can hang in its crash handler)."""
        try:
            url = f"http://{self.server.http_url}/v2/health/live"
            with urllib.request.urlopen(url, timeout=2) as resp:
                ok = resp.status == 200
        except (OSError, ValueError):
            ok = False
        now = time.monotonic()
        if ok:
            self._unresponsive_since = None
            return True
        self._unresponsive_since = self._unresponsive_since or now
        return now - self._unresponsive_since < self.unresponsive_after_s

    def _recover(self, r: Recovery) -> None:
        self.recoveries.append(r)
        what = f"stub {r.instance} (pid {r.pid}) of model '{r.model or '?'}' died"
        if r.instance == "tritonserver":
            code = self.server.process.returncode
            what = f"tritonserver (pid {r.pid}) " + (
                f"exited with code {code}" if code is not None
                else f"has not answered /v2/health/live for {self.unresponsive_after_s:.0f}s"
            )  # fmt: skip
        if r.action == "reload":
            self._log(f"{what}; reloading '{r.model}'")
            try:
                self._reload_with_retries(r.model)
                r.recovered_at = time.monotonic()
                self._log(f"'{r.model}' reloaded in {r.seconds:.1f}s")
                return
            except ModelRefused as exc:  # the repository's version does not load: a restart cannot help
                r.error = f"reload refused: {exc}"
                self._log(f"{r.error}; fix the repository and load '{r.model}' (the other models keep serving)")
                return
            except Exception as exc:  # the server did not answer: restart it
                r.error = f"reload failed: {exc}"
                self._log(f"{r.error}; restarting the server")
                r.action = "restart"
        recent = [
            x
            for x in self.recoveries
            if x.action == "restart" and time.monotonic() - x.detected_at < self.restart_window_s
        ]
        if len(recent) > self.max_restarts:
            r.error = f"gave up: more than {self.max_restarts} restarts in {self.restart_window_s:.0f}s"
            self._log(r.error)
            self._stop.set()
            return
        self._log(f"{what}; restarting the server")
        try:
            self.server.restart(timeout=self.stop_timeout_s)
            self._known.clear()
            self._suspects.clear()
            self._unresponsive_since = None
            r.recovered_at = time.monotonic()
            self._log(f"server restarted in {r.seconds:.1f}s")
        except Exception as exc:
            r.error = f"restart failed: {exc}"
            self._log(r.error)

    def _reload_with_retries(self, model: str) -> None:
        """`_reload`, tried again (`reload_attempts` in all) when the server refuses: a load can fail
        for a passing reason (memory, a warm-up), and until one succeeds the model stays broken."""
        for attempt in range(1, self.reload_attempts + 1):
            try:
                self._reload(model)
                return
            except ModelRefused as exc:
                if attempt == self.reload_attempts or self._stop.is_set():
                    raise
                self._log(f"reload of '{model}' refused ({str(exc)[:200]}); trying again")
                time.sleep(self.reload_retry_s)

    def _reload(self, model: str) -> None:
        """Load `model` again with its own current config as an override.

        A plain load request is a no-op when the model's files did not change, and so is one whose
        override config equals the loaded one (measured: Triton 2.51 keeps the broken instance).
        An override config with a fresh marker parameter makes Triton create new instances beside
        the old ones and switch when they are ready, without touching the repository.
        """
        import json

        from megaclass.python_backend.server.triton_server import admin_headers

        base = f"http://{self.server.http_url}/v2"
        with urllib.request.urlopen(f"{base}/models/{model}/config", timeout=10) as resp:
            config = json.loads(resp.read())
        # Triton skips a load whose config equals the loaded one: make each reload's config unique.
        params = config.setdefault("parameters", {})
        params["megaclass_watchdog_reload"] = {"string_value": f"{time.time():.6f}"}
        headers = {"Content-Type": "application/json"}
        if self.admin_key:
            headers.update(admin_headers(self.admin_key, "http"))
        body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
        req = urllib.request.Request(
            f"{base}/repository/models/{model}/load", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.server.ready_timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise ModelRefused(f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}") from None
