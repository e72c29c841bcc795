#!/usr/bin/env bash
# Prepare, on this machine, what a lent GPU machine needs and lacks (it has PyTorch, no FAISS or
# Triton): `.gpu/triton.tar.xz` (tritonserver, its libraries and the Python 3.12 backend stub from the
# nvidia-pytriton wheel installed in .venv, plus tritonclient's Python modules) and the faiss-cpu wheel.
# `.gpu/` is git-ignored and travels as a carried path; scripts/gpu_check.sh unpacks it there.
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p .gpu "$stage/pytriton/tritonserver/python_backend_stubs" "$stage/nvidia_pytriton.libs"
touch "$stage/pytriton/__init__.py"  # enough for importlib to find the package (triton_server.locate_triton)
cp -r "$site/pytriton/tritonserver/"{bin,backends,caches} "$stage/pytriton/tritonserver/"
cp -r "$site/pytriton/tritonserver/python_backend_stubs/3.12" "$stage/pytriton/tritonserver/python_backend_stubs/"
find "$site/nvidia_pytriton.libs" -type f ! -name 'libpython3-*' -exec cp {} "$stage/nvidia_pytriton.libs/" \;
cp -r "$site/tritonclient" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
# stripped of symbols (16 MB less; tested to serve): the whole carry must stay under 64 MiB
find "$stage" -type f \( -name '*.so*' -o -name tritonserver -o -name triton_python_backend_stub \) \
  -exec strip --strip-unneeded {} +
tar -C "$stage" -cf - . | xz -9e -T2 > .gpu/triton.tar.xz
pip_dl=(.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
  --implementation cp --platform manylinux_2_28_x86_64 -d .gpu)
ls .gpu/faiss_cpu-*.whl >/dev/null 2>&1 || "${pip_dl[@]}" "faiss-cpu==$(.venv/bin/python -c 'import faiss; print(faiss.__version__)')"
for req in "python-rapidjson" "numpy==$(.venv/bin/python -c 'import numpy; print(numpy.__version__)')"; do
  "${pip_dl[@]}" --platform manylinux_2_17_x86_64 "$req"  # tritonclient.grpc needs rapidjson; numpy<2 as here
done
du -sh .gpu/*
