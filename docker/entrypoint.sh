#!/bin/sh
# Start NVIDIA's tritonserver on the model repository with megaclass's serving flags.
# Every setting is an environment variable (defaults for the GPU image); extra arguments
# are passed on to tritonserver, e.g. `--log-verbose=1`.
#
#   MODEL_REPOSITORY=/models           BIND_ADDRESS=0.0.0.0
#   HTTP_PORT=8000 GRPC_PORT=8001 METRICS_PORT=8002
#   MODEL_CONTROL_MODE=none            none | poll | explicit (see model_repository/README.md)
#   SHM_DEFAULT_BYTE_SIZE=16777216     Python backend: shared memory per model instance
#   CUDA_MEMORY_POOL_BYTE_SIZE=        per GPU, e.g. 268435456 (unset: Triton's default)
#   PINNED_MEMORY_POOL_BYTE_SIZE=      unset: Triton's default
#   EXIT_TIMEOUT_SECS=30               on SIGTERM: stop taking requests, finish those in flight
#   TRITONSERVER=tritonserver          BACKEND_DIRECTORY=/opt/tritonserver/backends
set -eu

: "${MODEL_REPOSITORY:=/models}"
: "${BIND_ADDRESS:=0.0.0.0}"
: "${HTTP_PORT:=8000}"
: "${GRPC_PORT:=8001}"
: "${METRICS_PORT:=8002}"
: "${MODEL_CONTROL_MODE:=none}"
: "${SHM_DEFAULT_BYTE_SIZE:=16777216}"
: "${EXIT_TIMEOUT_SECS:=30}"
: "${TRITONSERVER:=tritonserver}"
: "${BACKEND_DIRECTORY:=/opt/tritonserver/backends}"

if [ ! -d "$MODEL_REPOSITORY" ] || [ -z "$(ls -A "$MODEL_REPOSITORY" 2>/dev/null)" ]; then
  echo "entrypoint: the model repository $MODEL_REPOSITORY is missing or empty;" >&2
  echo "entrypoint: mount one (-v \$PWD/model_repository:/models:ro) or build the 'baked' target" >&2
  exit 64
fi

set -- \
  --model-repository="$MODEL_REPOSITORY" \
  --backend-directory="$BACKEND_DIRECTORY" \
  --http-address="$BIND_ADDRESS" --grpc-address="$BIND_ADDRESS" --metrics-address="$BIND_ADDRESS" \
  --http-port="$HTTP_PORT" --grpc-port="$GRPC_PORT" --metrics-port="$METRICS_PORT" \
  --model-control-mode="$MODEL_CONTROL_MODE" \
  --strict-readiness=true \
  --exit-on-error=true \
  --exit-timeout-secs="$EXIT_TIMEOUT_SECS" \
  --allow-metrics=true \
  --log-format=ISO8601 \
  --backend-config=python,shm-default-byte-size="$SHM_DEFAULT_BYTE_SIZE" \
  ${CUDA_MEMORY_POOL_BYTE_SIZE:+--cuda-memory-pool-byte-size=0:$CUDA_MEMORY_POOL_BYTE_SIZE} \
  ${PINNED_MEMORY_POOL_BYTE_SIZE:+--pinned-memory-pool-byte-size=$PINNED_MEMORY_POOL_BYTE_SIZE} \
  "$@"

echo "entrypoint: $TRITONSERVER $*" >&2
# exec: tritonserver replaces the shell, so SIGTERM (docker stop, Kubernetes) reaches it directly.
exec "$TRITONSERVER" "$@"
