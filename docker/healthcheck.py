"""Container health check: exit 0 when Triton says it is ready, 1 otherwise.

Ready (`/v2/health/ready`, with --strict-readiness) means every model loaded and warmed up.
With --model, each named model must also be ready. Standard library only, so it runs in any
image that has Python (the NGC Triton image and the CPU image both do).

    python3 healthcheck.py --url http://127.0.0.1:8000 [--model classify]
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def status(url: str, timeout_s: float) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint")
    p.add_argument("--model", action="append", default=[], help="a model that must be ready (repeatable)")
    p.add_argument("--timeout", type=float, default=2.0)
    args = p.parse_args(argv)
    base = args.url.rstrip("/")
    checks = [f"{base}/v2/health/ready"] + [f"{base}/v2/models/{m}/ready" for m in args.model]
    for url in checks:
        code = status(url, args.timeout)
        if code != 200:
            print(f"not ready: {url} -> {code if code is not None else 'unreachable'}", file=sys.stderr)
            return 1
    print("ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
