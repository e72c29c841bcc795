#!/usr/bin/env bash
# The GPU check of issue #16 in ONE device call. Runs ON a lent GPU machine, from the repository root,
# with `.gpu/` carried (prepare it here first: bash scripts/gpu_bundle.sh). It
#   1. unpacks tritonserver (nvidia-pytriton wheel), tritonclient, faiss-cpu and numpy<2 from .gpu/,
#   2. runs the GPU tests (CUDA variants of the device-search, mixed-batch, CUDA-graph and gpu-torch
#      serving tests; they skip on a machine without CUDA),
#   3. runs loadtest/benchmarks/gpu_check.py: the retrieval table (exact vs routed on the GPU vs the
#      retriever as served vs routed FAISS on the CPU, 100k / 1M / 4M classes x 128) and the serving
#      sweep + saturation of `classify` on the gpu-torch target,
# and leaves in $OUT: pytest.txt, gpu_check.{md,json,log}, megaclass-gpu.toml (the sweep's chosen
# batching) and benchmarks.md (docs/benchmarks.md with its "gpu-path" section replaced: copy it back).
# Not run there, and why: faiss-gpu / cuVS (not installed: the routed GPU scan is torch's), the
# gpu-onnxruntime and gpu-tensorrt targets (the wheel's tritonserver has only the Python backend), the
# Docker images (no Docker engine). Arguments go to gpu_check.py (e.g. --sizes 100000,1000000 --skip serving).
# One call, from this machine:  run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=600)
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p /tmp/site /tmp/pkg/megaclass "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/*.whl || exit 1
tar -C /tmp/site -xJf .gpu/triton.tar.xz || exit 1
for d in export python_backend clients loadtest; do ln -sfn "$PWD/$d" "/tmp/pkg/megaclass/$d"; done
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1
# The backend stub's embedded interpreter does not see PYTHONPATH: a .pth file in site-packages puts
# our folders first (the carried numpy<2 before the machine's numpy 2, which the 2.51 Python backend's
# BYTES outputs do not survive: "output tensor shape does not match size of output").
echo "import sys; sys.path[:0] = ['/tmp/pkg', '/tmp/site']" > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/megaclass-gpu.pth"
python3 --version
nvidia-smi -L
echo "not run here: faiss-gpu/cuVS (absent), gpu-onnxruntime and gpu-tensorrt targets (no such Triton backends), Docker images"
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs \
  tests/python_backend/index/test_torch_search.py tests/python_backend/index/test_gpu_retrieval.py \
  tests/python_backend/serving/test_device_arrays.py tests/python_backend/serving/test_encoder_runtime.py \
  tests/integration/test_torch_encoder_target.py 2>&1 | tail -30 | tee "$OUT/pytest.txt"
timeout "${GPU_CHECK_TIMEOUT:-480}" python3 -m megaclass.loadtest.benchmarks.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
