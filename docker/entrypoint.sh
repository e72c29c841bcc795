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
#   MEGACLASS_ADMIN_KEY_FILE=          a secret file holding the admin key (Docker/Kubernetes secret);
#                                      model load/unload, trace and logging then need the header
#                                      megaclass-admin-key. The key never reaches tritonserver's command
#                                      line or environment (python_backend/server/keyed_exec.py).
#   MEGACLASS_INSECURE=0               1: allow MODEL_CONTROL_MODE=explicit on a non-loopback address
#                                      without a key (anyone reaching it could upload code: refused)
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

: "${MEGACLASS_ADMIN_KEY_FILE:=}"
: "${MEGACLASS_INSECURE:=0}"
: "${PYTHON:=python3}"
keyed=0
if [ -n "$MEGACLASS_ADMIN_KEY_FILE" ] && [ -f "$MEGACLASS_ADMIN_KEY_FILE" ] && [ -s "$MEGACLASS_ADMIN_KEY_FILE" ]; then
  keyed=1
elif [ -n "$MEGACLASS_ADMIN_KEY_FILE" ]; then
  echo "entrypoint: the admin key file $MEGACLASS_ADMIN_KEY_FILE is missing or empty" >&2
  unset MEGACLASS_ADMIN_KEY_FILE
fi
case "$BIND_ADDRESS" in
  127.*|localhost|::1) loopback=1 ;;
  *) loopback=0 ;;
esac
if [ "$MODEL_CONTROL_MODE" = explicit ] && [ "$loopback" = 0 ] && [ "$keyed" = 0 ] && [ "$MEGACLASS_INSECURE" != 1 ]; then
  echo "entrypoint: refusing to serve explicit model control on $BIND_ADDRESS without an admin key: anyone" >&2
  echo "entrypoint: who reaches it could upload a model.py and run code. Mount a secret and set" >&2
  echo "entrypoint: MEGACLASS_ADMIN_KEY_FILE to it, bind 127.0.0.1, or set MEGACLASS_INSECURE=1 if you mean it" >&2
  exit 78
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

unset MEGACLASS_ADMIN_KEY  # a key only from the secret file: never inherited by tritonserver or its stubs
echo "entrypoint: $TRITONSERVER $*" >&2
# exec: tritonserver replaces the shell, so SIGTERM (docker stop, Kubernetes) reaches it directly.
if [ "$keyed" = 1 ]; then
  exec "$PYTHON" -m megaclass.python_backend.server.keyed_exec "$TRITONSERVER" "$@"
fi
exec "$TRITONSERVER" "$@"
