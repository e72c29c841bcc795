"""The model-control plane, locked when exposed, and an admin key that leaks nowhere.

Triton's load-with-files API accepts a `model.py` from whoever may call it: on a non-loopback
address, explicit model control without a key is remote code execution. So:

- `check_exposure` refuses explicit model control on a non-loopback address without an admin key
  (`insecure=True`, the `--insecure` flag, for people who mean it).
- `resolve_admin_key` takes the key from a file (`--admin-key-file`, `$MEGACLASS_ADMIN_KEY_FILE`,
  a Docker or Kubernetes secret) or from `$MEGACLASS_ADMIN_KEY`; never from a command-line argument.
- Triton 2.51 takes its restricted-API key only on its command line (`--http-restricted-api`,
  `--grpc-restricted-protocol`), which any local user reads in /proc/<pid>/cmdline. The launcher
  passes a placeholder instead and the key through a pipe: a small preloaded library
  (`secret_args.cpp`, built once like the index kernels, at image build time in the images) reads
  the pipe before tritonserver's `main` and swaps the placeholder in tritonserver's own argument
  array. /proc shows the placeholder; the key is in no environment variable.
- `scrub_environment` removes the key's variables from the environment of tritonserver and with it
  of every Python-backend stub it starts.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path

ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV = "MEGACLASS_ADMIN_KEY", "MEGACLASS_ADMIN_KEY_FILE"
KEY_PLACEHOLDER = "@MEGACLASS_ADMIN_KEY@"  # what tritonserver's command line shows (secret_args.cpp)
SECRET_FD_ENV = "MEGACLASS_SECRET_FD"
PRELOAD_REST_ENV = "MEGACLASS_PRELOAD_REST"
MAX_KEY_BYTES = 4095  # secret_args.cpp's buffer


class SecurityError(RuntimeError):
    """The server would start exposed, or the admin key cannot be read or passed safely."""


def resolve_admin_key(key_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin key: `key_file`, else the file named by $MEGACLASS_ADMIN_KEY_FILE, else $MEGACLASS_ADMIN_KEY;
    None when none is set or the file is empty. A key file that cannot be read is an error."""
    environ = os.environ if environ is None else environ
    key_file = key_file or environ.get(ADMIN_KEY_FILE_ENV)
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise SecurityError(f"cannot read the admin key file {key_file}: {exc.strerror or exc}") from None
        # An empty file is no key (Compose's default secret is /dev/null): exposed explicit mode is then refused.
    else:
        key = (environ.get(ADMIN_KEY_ENV) or "").strip()
    if key and (len(key.encode()) > MAX_KEY_BYTES or any(c in key for c in "\n\r\0,:=")):
        raise SecurityError(f"the admin key must be one line of at most {MAX_KEY_BYTES} bytes without , : or =")
    return key or None


def add_security_args(p) -> None:
    """--admin-key-file and --insecure for a command that starts a server (`argparse` parser `p`)."""
    p.add_argument(
        "--admin-key-file",
        default=None,
        help=f"file holding the admin key that model load/unload requires (default: ${ADMIN_KEY_FILE_ENV}, "
        f"else ${ADMIN_KEY_ENV}; never on the command line)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow explicit model control on a non-loopback address without an admin key (default: refused)",
    )


def is_loopback(host: str) -> bool:
    """True when `host` (a name or an address) only accepts connections from this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


def check_exposure(host: str, explicit: bool, admin_key: str | None, insecure: bool = False) -> None:
    """Refuse explicit model control on a non-loopback `host` without an admin key (unless `insecure`)."""
    if explicit and not admin_key and not insecure and not is_loopback(host):
        raise SecurityError(
            f"refusing to serve explicit model control on {host} without an admin key: anyone who reaches "
            f"that address could upload a model.py and run code on this machine. Set the key in a file "
            f"(--admin-key-file FILE or ${ADMIN_KEY_FILE_ENV}) or in ${ADMIN_KEY_ENV}, bind 127.0.0.1, or "
            f"pass --insecure if you mean it"
        )


def scrub_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the admin key's variables (what tritonserver and its stubs inherit)."""
    return {k: v for k, v in environ.items() if k not in (ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV, SECRET_FD_ENV)}


def restricted_api_args(restricted_apis: tuple[str, ...], header: str) -> list[str]:
    """tritonserver's restricted-API options, with `KEY_PLACEHOLDER` where the key goes."""
    value = f"{','.join(restricted_apis)}:{header}={KEY_PLACEHOLDER}"
    return [f"--http-restricted-api={value}", f"--grpc-restricted-protocol={value}"]


def preload_library() -> Path:
    """The built `secret_args.cpp` (cached by source hash and flags, like the index kernels)."""
    from megaclass.python_backend.index.native.build import NativeUnavailable, build

    try:
        return build("secret_args", "portable", source_dir=Path(__file__).parent)
    except NativeUnavailable as exc:
        raise SecurityError(
            f"the admin key is passed to tritonserver by a small preloaded library that could not be built "
            f"({exc}); the images build it at image build time. Without it the key would show in "
            f"/proc/<pid>/cmdline, so the server is not started"
        ) from None


def key_pipe(admin_key: str, environ: Mapping[str, str]) -> tuple[dict[str, str], int]:
    """(environment, read end) for a tritonserver that takes `admin_key` through the preloaded library.

    The caller passes the read end in `pass_fds` and closes it after the start.
    """
    env = scrub_environment(environ)
    library = str(preload_library())
    if env.get("LD_PRELOAD"):
        env[PRELOAD_REST_ENV] = env["LD_PRELOAD"]  # restored for the stubs (jemalloc, for example)
    env["LD_PRELOAD"] = ":".join(x for x in (library, env.get("LD_PRELOAD")) if x)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, admin_key.encode())
    finally:
        os.close(write_end)
    env[SECRET_FD_ENV] = str(read_end)
    return env, read_end
