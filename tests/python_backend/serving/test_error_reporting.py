"""Internal errors are logged with a request id; the client's message carries the id, not the internals."""

from __future__ import annotations

import logging
import re

from megaclass.python_backend.serving.error_reporting import error_message
from megaclass.python_backend.serving.request_batching import InputError


def test_client_errors_keep_their_specific_message(caplog):
    with caplog.at_level(logging.ERROR, logger="megaclass"):
        message, client = error_message("retriever", InputError("EMBEDDING has 3 values per row, expected 16"))
    assert client and message == "retriever: EMBEDDING has 3 values per row, expected 16"
    assert caplog.records == []  # the client's mistake is not the server's problem


def test_internal_errors_are_logged_with_an_id_the_client_gets(caplog):
    try:
        raise RuntimeError("faiss internals: /opt/lib/IndexIVF.cpp:123 assertion failed")
    except RuntimeError as caught:
        exc = caught
        with caplog.at_level(logging.ERROR, logger="megaclass"):
            message, client = error_message("encoder", exc)
    assert not client and "faiss" not in message and "IndexIVF" not in message
    request_id = re.fullmatch(r"encoder: internal error \(request id ([0-9a-f]{16})\); .*", message).group(1)
    (record,) = caplog.records
    assert request_id in record.getMessage() and "IndexIVF.cpp:123" in record.getMessage()
    assert record.exc_info is not None  # with its traceback
    assert error_message("encoder", exc)[0] != message  # one id per failure
