"""The server's memory across many bad requests, and requests far over the size limits.

RSS is sampled (psutil) for tritonserver and for each Python-backend stub. Bounded: a fixed
number of requests from a few threads, over both protocols.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from .conftest import EMBEDDING_DIM, MAX_BATCH, process_rss, raw_infer
from .test_bad_input import CASES, ENCODED

pytestmark = pytest.mark.integration
MB = 1 << 20


def _send_bad(stack, n: int, threads: int = 4) -> int:
    """`n` bad requests cycling through every bad-input case and both protocols; returns the
    number answered with an error (all of them, unless one unexpectedly succeeds)."""
    jobs = list(itertools.product(["grpc", "http"], [*CASES, *(f"encoded:{k}" for k in ENCODED)]))
    encoded = {k: np.array([[make(stack)]], dtype=object) for k, (make, _) in ENCODED.items()}

    def one(i: int) -> bool:
        protocol, name = jobs[i % len(jobs)]
        try:
            if name.startswith("encoded:"):
                data = encoded[name.split(":", 1)[1]]
                raw_infer(stack, protocol, "classify_encoded", [("IMAGE_BYTES", data, "BYTES")])
            else:
                case = CASES[name]
                raw_infer(stack, protocol, case.model, case.inputs(), case.parameters, case.version)
        except InferenceServerException:
            return True
        return False

    with cf.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, range(n)))


def test_memory_does_not_grow_across_a_thousand_bad_requests(stack, good_traffic):
    _send_bad(stack, 200)  # warm-up: every error path has run, allocator pools are sized
    before = process_rss(stack.server)
    start = time.monotonic()
    assert _send_bad(stack, 1000) == 1000
    elapsed = time.monotonic() - start
    after = process_rss(stack.server)
    growth = {k: (after.get(k, 0) - v) / MB for k, v in before.items()}
    print(f"1000 bad requests in {elapsed:.1f}s; RSS growth MB: {growth}; after MB: "
          f"{ {k: round(v / MB, 1) for k, v in after.items()} }")  # fmt: skip
    assert set(after) == set(before), "a stub process died or appeared"
    for name, mb in growth.items():
        assert mb < max(8.0, 0.05 * before[name] / MB), f"{name} grew {mb:.1f} MB across 1000 bad requests"
    good_traffic.assert_healthy(since=start)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_request_far_over_the_size_limits(stack, good_traffic, protocol):
    """Requests of 64 MB and 8 MB (millions of times the batch limit) are refused by shape, with the
    limit in the message, before any model sees them, and the server's memory plateaus.

    Triton 2.51 has no request-size flag: gRPC takes messages up to 2 GB, HTTP bodies are not
    capped, and a body is read whole before the shape check. On gRPC the server keeps a pool of
    request objects (`--grpc-infer-allocation-pool-size`, default 8) that hold on to the largest
    buffers they carried, so RSS rises by some ten to twenty request sizes and then stays flat; a
    leak would add one request size per request. docs/reliability.md: the numbers, and the front
    proxy that caps bodies (docker/nginx: client_max_body_size).
    """

    def oversized(rows: int) -> None:
        array = np.zeros((rows, EMBEDDING_DIM), np.float32)
        t = time.monotonic()
        with pytest.raises(InferenceServerException, match=rf"batch-size must be <= {MAX_BATCH} for 'retriever'"):
            raw_infer(stack, protocol, "retriever", [("EMBEDDING", array, "FP32")], timeout_s=120)
        assert time.monotonic() - t < 60

    start = time.monotonic()
    oversized(64 * MB // (4 * EMBEDDING_DIM))
    size, count = 2 * MB, 100
    base = process_rss(stack.server)["tritonserver"]
    rss = []
    for _ in range(count):
        oversized(size // (4 * EMBEDDING_DIM))
        rss.append(process_rss(stack.server)["tritonserver"])
    print(f"{protocol}: tritonserver RSS MB before {count} x {size // MB} MB requests {base / MB:.0f}, "
          f"every 20th after: {[round(r / MB) for r in rss[::20]]}, max {max(rss) / MB:.0f}")  # fmt: skip
    # a server that kept each request would have grown by count * size = 200 MB
    assert max(rss) - base < count * size / 2, "oversized requests are retained: the server grows with each one"
    good_traffic.assert_healthy(since=start)
