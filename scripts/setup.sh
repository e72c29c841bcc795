#!/usr/bin/env bash
# Sets up everything megaclass needs on a fresh machine: Debian packages (when root),
# a virtual environment in .venv with the pinned Python dependencies, and the package itself.
# Idempotent: a second run only checks (the stamp holds a hash of the pinned inputs).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  libb64-0d                      # perf_analyzer (tritonclient wheel) links it
  g++                            # the routed index's native backend builds its kernel on first use
  nginx                          # the local scale-out run: gRPC/HTTP load balancing over replicas
  fontconfig
  fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf
  fonts-wqy-microhei fonts-wqy-zenhei fonts-arphic-ukai fonts-arphic-uming fonts-ipafont-gothic
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # RUNLEVEL=1: do not start services (nginx) on install; the project starts its own.
    RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: WARNING: not root (or no apt-get), so these Debian packages are not installed: ${missing[*]}" >&2
    echo "setup:   ask an administrator for: sudo apt-get install ${missing[*]}" >&2
    echo "setup:   without libb64-0d perf_analyzer cannot run; without the fonts the glyph set has fewer classes." >&2
  fi
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null && { PY=$c; break; }; done
fi
[ -n "$PY" ] || { echo "setup: no python3 found" >&2; exit 1; }
"$PY" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), sys.version' 2>/dev/null || {
  echo "setup: Python 3.10-3.12 is needed (the Triton Python-backend stubs exist for those); found $($PY --version)" >&2; exit 1; }

stamp=.venv/.megaclass-setup
want=$(cat requirements.lock requirements-mlops.lock requirements-airflow.lock requirements-bench.txt pyproject.toml \
  setup.py scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/megaclass ] && [ -x .venv-airflow/bin/airflow ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing pinned Python dependencies into .venv (a few minutes the first time)"
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=68"
# MLflow (tracking, registry) and kfp (pipeline compiler) resolve together with the lock: one install.
.venv/bin/python -m pip install -q -r requirements.lock -r requirements-mlops.lock
# The benchmark's peer ANN libraries and text encoder (requirements-bench.txt): hnswlib compiles,
# portably; scann without its declared tensorflow, which its pybind search does not use.
HNSWLIB_NO_NATIVE=1 .venv/bin/python -m pip install -q -c requirements.lock -c requirements-mlops.lock \
  -r requirements-bench.txt
.venv/bin/python -m pip install -q --no-deps scann==1.3.5
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
# Airflow cannot share .venv (it needs protobuf>=5, tritonclient 2.51 needs <5): its own venv, frozen
# in requirements-airflow.lock. The DAG's tasks run .venv/bin/megaclass as subprocesses.
echo "setup: installing Airflow into .venv-airflow (runs the generated refresh DAG)"
[ -x .venv-airflow/bin/python ] || "$PY" -m venv .venv-airflow
.venv-airflow/bin/python -m pip install -q --upgrade pip
.venv-airflow/bin/python -m pip install -q -r requirements-airflow.lock
echo "$want" > "$stamp"
echo "setup: done ($(.venv/bin/python --version), .venv ready)"
