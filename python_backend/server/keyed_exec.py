"""`python -m megaclass.python_backend.server.keyed_exec TRITONSERVER [ARGS...]`: exec tritonserver with
its restricted APIs behind the admin key, the key kept off its command line and environment.

What the GPU image's entrypoint (docker/entrypoint.sh) runs when an admin key is configured: the key
comes from `$MEGACLASS_ADMIN_KEY_FILE` (a Docker or Kubernetes secret) or `$MEGACLASS_ADMIN_KEY`; the
restricted-API options carry a placeholder and the key goes through a pipe to the preloaded library
(security.py). The process is replaced (exec), so signals reach tritonserver directly.
"""

from __future__ import annotations

import os
import sys

from megaclass.python_backend.server.security import SecurityError, key_pipe, resolve_admin_key, restricted_api_args
from megaclass.python_backend.server.triton_server import ADMIN_HEADER, RESTRICTED_APIS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m megaclass.python_backend.server.keyed_exec TRITONSERVER [ARGS...]", file=sys.stderr)
        return 64
    try:
        key = resolve_admin_key()
        if not key:
            raise SecurityError("no admin key: set MEGACLASS_ADMIN_KEY_FILE (a secret file) or MEGACLASS_ADMIN_KEY")
        env, read_end = key_pipe(key, os.environ)
    except SecurityError as exc:
        print(f"keyed_exec: {exc}", file=sys.stderr)
        return 78
    os.set_inheritable(read_end, True)
    command = [argv[0], *restricted_api_args(RESTRICTED_APIS, ADMIN_HEADER), *argv[1:]]
    os.execvpe(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
