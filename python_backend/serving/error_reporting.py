"""Failures leave a trace: internal errors are logged with a request id; clients get the id, not the internals.

The package logs with the standard `logging` module under the `megaclass` logger. Inside a Triton
Python-backend model, `use_triton_log(pb_utils)` routes those records into Triton's own log
(`pb_utils.Logger`), so they land in the server log beside Triton's lines. `error_message` is what a
model answers a failed request with: a client error (the request's fault, INVALID_ARG / HTTP 400)
keeps its specific message; anything else is logged with its traceback under a fresh request id, and
the client gets a generic message carrying that id, to quote when asking what happened.
"""

from __future__ import annotations

import logging
import uuid

from megaclass.python_backend.serving.request_batching import is_client_error

LOGGER = logging.getLogger("megaclass")


class TritonLogHandler(logging.Handler):
    """A `logging` handler writing to Triton's log through `pb_utils.Logger`."""

    def __init__(self, pb_utils) -> None:
        super().__init__()
        self.logger = pb_utils.Logger
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                self.logger.log_error(text)
            elif record.levelno >= logging.WARNING:
                self.logger.log_warn(text)
            else:
                self.logger.log_info(text)
        except Exception:  # a log line must never take a request down
            self.handleError(record)


def use_triton_log(pb_utils, level: int = logging.INFO) -> None:
    """Send the `megaclass` loggers' records to Triton's log (once per stub process)."""
    if not any(isinstance(h, TritonLogHandler) for h in LOGGER.handlers):
        LOGGER.addHandler(TritonLogHandler(pb_utils))
        LOGGER.setLevel(level)
        LOGGER.propagate = False


def new_request_id() -> str:
    """A short random id that ties a client's error message to its log record."""
    return uuid.uuid4().hex[:16]


def error_message(model: str, exc: BaseException) -> tuple[str, bool]:
    """(message for the client, whether it is the client's error). Internal errors are logged here."""
    if is_client_error(exc):
        return f"{model}: {exc}", True
    request_id = new_request_id()
    LOGGER.error(
        "%s: internal error, request id %s: %s: %s",
        model,
        request_id,
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return f"{model}: internal error (request id {request_id}); the server log has the details", False
