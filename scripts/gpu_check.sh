#!/usr/bin/env bash
# Runs ON a lent GPU machine, from the repository root, with `.gpu/` (scripts/gpu_bundle.sh) carried:
# unpacks FAISS and Triton, runs the GPU tests, then loadtest/benchmarks/gpu_check.py (index and serving on
# the GPU). Results go to $OUT (gpu_check.md: the section for docs/benchmarks.md).
# Arguments are passed to gpu_check.py (e.g. --classes 200000 --seconds 4 --skip index).
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
python3 -c "import glob, sysconfig; d = sysconfig.get_config_var('LIBDIR'); print('libpython:', glob.glob(d + '/libpython3*'))"
timeout 180 python3 -m pytest -q -p no:cacheprovider -x \
  tests/integration/test_torch_encoder_target.py tests/python_backend/serving/test_device_arrays.py \
  tests/python_backend/index/test_scan.py 2>&1 | tail -25 | tee "$OUT/pytest.txt"
timeout "${GPU_CHECK_TIMEOUT:-420}" python3 -m megaclass.loadtest.benchmarks.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
