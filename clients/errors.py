"""One exception type for every client failure, and the retry policy that decides what to retry.

Whatever failed — the server rejected a request, the server could not be reached, a call timed
out — the caller sees `MegaclassError` with the server's message and a `status` saying which
kind of failure it was. Only "unavailable" failures (nothing listening yet, connection reset,
the server shedding load because a model's queue is full) are retried, with exponential
back-off; a rejected request is not, and neither is a timeout unless the policy says so.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass

# The closed set of `MegaclassError.status` values.
UNAVAILABLE = "unavailable"  # nothing listening, connection refused/reset, queue full (shedding)
TIMEOUT = "timeout"  # no answer within the client's timeout
INVALID = "invalid"  # the server rejected the request (bad shape, dtype, top_k, ...)
SERVER = "server"  # any other server-side failure
STATUSES = (UNAVAILABLE, TIMEOUT, INVALID, SERVER)


class MegaclassError(RuntimeError):
    """A request failed; the message is the server's (or says the server was unreachable).

    `status` is one of "unavailable", "timeout", "invalid", "server".
    """

    def __init__(self, message: str, status: str = SERVER):
        super().__init__(message)
        self.status = status if status in STATUSES else SERVER


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential back-off: attempt i (from 0) waits min(backoff_s * 2**i, max_backoff_s),
    multiplied by a random factor in [1 - jitter, 1 + jitter]."""

    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    jitter: float = 0.2
    retry_timeouts: bool = False  # a timed-out call may still be running: not retried by default

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid retry policy {self}")

    def delays(self) -> Iterator[float]:
        """The waits before each retry (`retries` of them)."""
        for i in range(self.retries):
            base = min(self.backoff_s * 2**i, self.max_backoff_s)
            yield base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def should_retry(self, error: MegaclassError) -> bool:
        return error.status == UNAVAILABLE or (self.retry_timeouts and error.status == TIMEOUT)


_UNAVAILABLE_WORDS = (
    "unavailable",
    "connection refused",
    "failed to connect",
    "connect failed",
    "exceeds maximum queue",
    # A model instance whose stub process died: the launcher's watchdog reloads the model within
    # seconds (python_backend/server/watchdog.py), so a retry after back-off is answered.
    "is not healthy",
)
_TIMEOUT_WORDS = ("deadline exceeded", "deadline_exceeded", "timed out", "timeout")


def to_megaclass_error(exc: BaseException, url: str) -> MegaclassError:
    """Classify any exception raised by tritonclient (gRPC or HTTP, sync or asyncio)."""
    if isinstance(exc, MegaclassError):
        return exc
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        msg = exc.message() or str(exc)
        code = (exc.status() or "").upper()
        low = f"{code} {msg}".lower()
        if "UNAVAILABLE" in code or code == "503" or any(w in low for w in _UNAVAILABLE_WORDS):
            return MegaclassError(msg, UNAVAILABLE)
        if "DEADLINE_EXCEEDED" in code or any(w in low for w in _TIMEOUT_WORDS):
            return MegaclassError(f"no answer from {url} in time: {msg}", TIMEOUT)
        if "INVALID_ARGUMENT" in code or code.startswith("4"):
            return MegaclassError(msg, INVALID)
        return MegaclassError(msg, SERVER)
    if _is_timeout(exc):
        return MegaclassError(f"no answer from {url} in time ({type(exc).__name__}: {exc})", TIMEOUT)
    if isinstance(exc, ConnectionError | OSError) or type(exc).__module__.startswith("aiohttp"):
        return MegaclassError(f"cannot reach the server at {url}: {type(exc).__name__}: {exc}", UNAVAILABLE)
    return MegaclassError(f"{type(exc).__name__}: {exc}", SERVER)


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError | socket.timeout):
        return True
    name = type(exc).__name__
    # gevent.Timeout (geventhttpclient, tritonclient.http) and aiohttp's ServerTimeoutError
    return name in ("Timeout", "ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError")


# The exceptions a call may raise that `to_megaclass_error` understands. gevent's Timeout derives
# from BaseException, so catching Exception alone would let it escape.
def catchable() -> tuple[type[BaseException], ...]:
    try:
        from gevent import Timeout as GeventTimeout

        return (Exception, GeventTimeout)
    except ImportError:  # pragma: no cover - gevent comes with tritonclient[http]
        return (Exception,)
