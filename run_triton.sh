#!/usr/bin/env bash
# Start Triton on a model repository built by `python -m export`, wait until it is
# ready, and stop it cleanly on Ctrl-C / SIGTERM.
#
#   ./run_triton.sh                                  # build/repository, ports 8000/8001/8002
#   ./run_triton.sh --repository DIR --http-port 18000 --grpc-port 18001 --metrics-port 18002
#   ./run_triton.sh --mode container --gpus device=0 # NVIDIA's container, mask_rcnn on libtorch
#   ./run_triton.sh --mode container --dry-run       # print the docker command only
#
# Container options: --image (default: the release matching the export's torch and the
# execution environment's Python, envs/triton-containers.tsv), --gpus all|0|0,1 (indices),
# --shm-size (default: sized for dense answers of --answer-image WxH, 1920x1080).
# --exit-timeout SECONDS (default 30): how long a stop waits for requests in flight.
# Modes
#   embedded   the tritonserver binary and Python backend inside the PyPI wheel
#              nvidia-pytriton (server 2.51), run from the project's venv so the Python
#              models see its packages; configs/embedded.pbtxt is selected, so mask_rcnn
#              runs through its Python runner. Works on a CPU-only machine, no Docker.
#              --watchdog on (default): a model whose Python stub process dies is
#              reloaded (server/watchdog.py); --watchdog off: it stays failed.
#   container  nvcr.io/nvidia/tritonserver with the same repository; mask_rcnn on the
#              PyTorch (libtorch) backend, KIND_GPU. Needs a Docker engine and a GPU.
#              The Python models use the execution environment assembled into the
#              repository (--execution-env, docs/deploy.md).
#   auto       (default) container if a Docker engine answers and a GPU is visible, else embedded.
#
# Servers bind 127.0.0.1 unless --address says otherwise (see docs/reliability.md, "Security").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE=auto
REPOSITORY="$ROOT/build/repository"
ADDRESS=127.0.0.1
HTTP_PORT=8000
GRPC_PORT=8001
METRICS_PORT=8002
# The venv whose Python runs the models (--python). Not read from $PYTHON: that names
# the interpreter envs/setup.sh builds the venv from (make test PYTHON=python3.12).
SERVING_PYTHON="$ROOT/.venv/bin/python"
READY_TIMEOUT=600
# tritonserver's --exit-timeout-secs. Triton 2.51 waits all of it after a failed reload or
# a stub's death; in embedded mode stop() does not (docs/triton-2.51.md).
EXIT_TIMEOUT=30
LOG_VERBOSE=0
MODEL_CONTROL=none
# Embedded: reload a Python model whose stub process died (server/watchdog.py). It needs
# the model-repository API, which is then restricted to a per-run secret header.
WATCHDOG=on
# Empty: chosen from the repository (envs/triton_container.py).
CONTAINER_IMAGE="${TRITON_IMAGE:-}"
GPUS=all
SHM_SIZE=""
ANSWER_IMAGE=1920x1080
DRY_RUN=0
# Empty: no headers forwarded. A regex: HTTP and gRPC headers whose names match it reach
# the models as request parameters (pipeline_bls skips them when its header_forward_pattern
# is the same regex).
HEADER_FORWARD=""
# Python backend shared memory per model instance: start at 16 MiB and grow by 16 MiB
# (a dense-mask answer for 100 detections at 1080p is ~200 MB; RLE answers are tiny).
SHM_DEFAULT=$((16 * 1024 * 1024))
SHM_GROWTH=$((16 * 1024 * 1024))

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "run_triton.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --mode) MODE="$2"; shift 2 ;;
    --repository) REPOSITORY="$2"; shift 2 ;;
    --address) ADDRESS="$2"; shift 2 ;;
    --http-port) HTTP_PORT="$2"; shift 2 ;;
    --grpc-port) GRPC_PORT="$2"; shift 2 ;;
    --metrics-port) METRICS_PORT="$2"; shift 2 ;;
    --python) SERVING_PYTHON="$2"; shift 2 ;;
    --ready-timeout) READY_TIMEOUT="$2"; shift 2 ;;
    --exit-timeout) EXIT_TIMEOUT="$2"; shift 2 ;;
    --log-verbose) LOG_VERBOSE="$2"; shift 2 ;;
    --model-control-mode) MODEL_CONTROL="$2"; shift 2 ;;
    --image) CONTAINER_IMAGE="$2"; shift 2 ;;
    --gpus) GPUS="$2"; shift 2 ;;
    --shm-size) SHM_SIZE="$2"; shift 2 ;;
    --answer-image) ANSWER_IMAGE="$2"; shift 2 ;;
    --watchdog) WATCHDOG="$2"; shift 2 ;;
    --header-forward-pattern) HEADER_FORWARD="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "run_triton.sh: unknown option $1" >&2; usage 2 ;;
  esac
done

[[ -d "$REPOSITORY" ]] || die "no model repository at $REPOSITORY; build one with: python -m export torchvision --repository $REPOSITORY"
REPOSITORY="$(cd "$REPOSITORY" && pwd)"
for port in "$HTTP_PORT" "$GRPC_PORT" "$METRICS_PORT"; do
  [[ "$port" =~ ^[0-9]+$ ]] || die "port '$port' is not a number"
done

if [[ "$MODE" == auto ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1 \
     && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    MODE=container
  else
    MODE=embedded
  fi
fi

SERVER_ARGS=(
  --model-control-mode="$MODEL_CONTROL"
  --exit-timeout-secs="$EXIT_TIMEOUT"
  --log-verbose="$LOG_VERBOSE"
  --backend-config="python,shm-default-byte-size=$SHM_DEFAULT"
  --backend-config="python,shm-growth-byte-size=$SHM_GROWTH"
)
if [[ -n "$HEADER_FORWARD" ]]; then
  SERVER_ARGS+=(--http-header-forward-pattern="$HEADER_FORWARD"
                --grpc-header-forward-pattern="$HEADER_FORWARD")
fi

SERVER_PID=""
WATCHDOG_PID=""
CONTAINER_NAME=""
stop() {
  trap - INT TERM EXIT
  local deaths=0
  if [[ -n "$WATCHDOG_PID" ]]; then  # first, so it does not take the shutdown for deaths
    kill -TERM "$WATCHDOG_PID" 2>/dev/null || true
    wait "$WATCHDOG_PID" 2>/dev/null || deaths=$?
    (( deaths == 10 )) || deaths=0  # server/watchdog.py DEATHS_SEEN: a stub died
  fi
  if [[ -n "$CONTAINER_NAME" ]]; then
    docker stop -t "$EXIT_TIMEOUT" "$CONTAINER_NAME" >/dev/null 2>&1 || true
  fi
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "run_triton.sh: stopping tritonserver (pid $SERVER_PID)" >&2
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    if [[ "$MODE" == embedded ]]; then
      # Once no live stub is left (every model here is a Python one), every model has
      # drained and unloaded. Triton 2.51 may still wait out its exit timeout: for the
      # instance of a stub that died with requests in it (their clients were answered),
      # and for a version whose reload failed (it stays UNLOADING). 3 s more for
      # tritonserver to close, then it is stopped.
      while kill -0 "$SERVER_PID" 2>/dev/null \
            && ps -o stat= --ppid "$SERVER_PID" 2>/dev/null | grep -qv '^Z'; do
        sleep 0.2
      done
      for _ in $(seq 15); do kill -0 "$SERVER_PID" 2>/dev/null && sleep 0.2; done
      if kill -0 "$SERVER_PID" 2>/dev/null; then
        local why="a failed reload's version"
        (( deaths )) && why="the instance of a stub that died"
        echo "run_triton.sh: every model has unloaded; stopping tritonserver, which still" \
             "waits for $why" >&2
        kill -KILL "$SERVER_PID" 2>/dev/null || true
      fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  # Shared-memory regions of stubs that died before the server could remove them.
  rm -f /dev/shm/triton_bls_$$_* 2>/dev/null || true
}

wait_ready() {
  local url="http://$1:$HTTP_PORT/v2/health/ready" deadline=$((SECONDS + READY_TIMEOUT))
  while (( SECONDS < deadline )); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" && rc=0 || rc=$?
      die "tritonserver exited with status $rc before it was ready (its log is above)"
    fi
    if "$SERVING_PYTHON" - "$url" 2>/dev/null <<'EOF'
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
EOF
    then
      echo "run_triton.sh: ready ($MODE) http=$1:$HTTP_PORT grpc=$1:$GRPC_PORT metrics=$1:$METRICS_PORT pid=$SERVER_PID"
      return 0
    fi
    sleep 1
  done
  die "tritonserver not ready after ${READY_TIMEOUT}s"
}

if [[ "$MODE" == embedded ]]; then
  [[ -x "$SERVING_PYTHON" ]] || die "no Python at $SERVING_PYTHON; run 'make setup' (or pass --python)"
  # Where the wheel keeps the server, its libraries, and the stub for this Python.
  read -r DIST LIBS STUB LIBPYTHON VERSION < <("$SERVING_PYTHON" - <<'EOF'
import sys, sysconfig
from pathlib import Path
import pytriton
from importlib.metadata import version
root = Path(pytriton.__file__).parent
py = f"{sys.version_info[0]}.{sys.version_info[1]}"
print(root / "tritonserver", root.parent / "nvidia_pytriton.libs",
      root / "tritonserver" / "python_backend_stubs" / py / "triton_python_backend_stub",
      sysconfig.get_config_var("LIBDIR"), f"{version('nvidia-pytriton')}-py{py}")
EOF
  ) || die "$SERVING_PYTHON cannot import pytriton; run 'make setup'"
  [[ -x "$STUB" ]] || die "nvidia-pytriton has no Python backend stub for this Python ($STUB)"
  # The Python backend looks for its stub in its own folder: assemble a server folder
  # (bin, backends, stub) once per wheel version, beside the repo, never inside the wheel.
  SERVER_HOME="${TRITON_HOME:-$ROOT/.triton}/$VERSION"
  if [[ ! -x "$SERVER_HOME/backends/python/triton_python_backend_stub" ]]; then
    rm -rf "$SERVER_HOME.tmp.$$" && mkdir -p "$SERVER_HOME.tmp.$$"
    cp -r "$DIST/bin" "$DIST/backends" "$SERVER_HOME.tmp.$$/"
    cp "$STUB" "$SERVER_HOME.tmp.$$/backends/python/"
    rm -rf "$SERVER_HOME" && mv "$SERVER_HOME.tmp.$$" "$SERVER_HOME"
  fi
  VENV_BIN="$(dirname "$SERVING_PYTHON")"
  # The stub embeds libpython and finds the interpreter as `python3` on PATH: putting the
  # venv first makes the models import the venv's packages (numpy<2: see requirements.txt).
  export LD_LIBRARY_PATH="$LIBS:$LIBPYTHON${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PATH="$VENV_BIN:$PATH"
  [[ "$WATCHDOG" == on || "$WATCHDOG" == off ]] || die "--watchdog must be on or off, got '$WATCHDOG'"
  if [[ "$WATCHDOG" == on && "$MODEL_CONTROL" == none ]]; then
    # Clients still cannot load or unload: the API answers only with the per-run header.
    ADMIN_HEADER=triton-admin-key
    ADMIN_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    (( DRY_RUN )) && ADMIN_KEY="PER-RUN-SECRET"
    SERVER_ARGS[0]="--model-control-mode=explicit"
    SERVER_ARGS+=(--load-model='*'
                  --http-restricted-api="model-repository:$ADMIN_HEADER=$ADMIN_KEY"
                  --grpc-restricted-protocol="model-repository:$ADMIN_HEADER=$ADMIN_KEY")
  else
    WATCHDOG=off
  fi
  CMD=("$SERVER_HOME/bin/tritonserver"
       --model-repository="$REPOSITORY"
       --backend-directory="$SERVER_HOME/backends"
       --model-config-name=embedded
       --http-address="$ADDRESS" --http-port="$HTTP_PORT"
       --grpc-address="$ADDRESS" --grpc-port="$GRPC_PORT"
       --metrics-address="$ADDRESS" --metrics-port="$METRICS_PORT"
       --backend-config="python,shm-region-prefix-name=triton_bls_$$_"
       "${SERVER_ARGS[@]}")
  if (( DRY_RUN )); then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
  trap stop INT TERM EXIT
  "${CMD[@]}" &
  SERVER_PID=$!
  wait_ready "$ADDRESS"
  if [[ "$WATCHDOG" == on ]]; then
    WATCH_HOST="$ADDRESS"; [[ "$ADDRESS" == 0.0.0.0 ]] && WATCH_HOST=127.0.0.1
    TRITON_ADMIN_HEADER="$ADMIN_HEADER" TRITON_ADMIN_KEY="$ADMIN_KEY" \
      PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
      "$SERVING_PYTHON" -m server.watchdog --url "http://$WATCH_HOST:$HTTP_PORT" --server-pid "$SERVER_PID" &
    WATCHDOG_PID=$!
  fi
elif [[ "$MODE" == container ]]; then
  # Reading the repository needs protobuf (the project's venv); python3 otherwise.
  [[ -x "$SERVING_PYTHON" ]] || SERVING_PYTHON="$(command -v python3 || true)"
  [[ -n "$SERVING_PYTHON" ]] || die "container mode needs Python 3 to read the repository"
  # Sets IMAGE, SHM_SIZE_AUTO, EXPORT_TORCH, ENV_PYTHON, HAS_ENV (or explains why not).
  PLAN="$("$SERVING_PYTHON" "$ROOT/envs/triton_container.py" plan --repository "$REPOSITORY" \
          --answer-image "$ANSWER_IMAGE" ${CONTAINER_IMAGE:+--image "$CONTAINER_IMAGE"})" || exit 2
  eval "$PLAN"
  CONTAINER_IMAGE="$IMAGE"
  SHM_SIZE="${SHM_SIZE:-$SHM_SIZE_AUTO}"
  # GPU indices (as nvidia-smi numbers them) or all; docker's own count form is not
  # offered, so `--gpus 1` means GPU 1, not one GPU.
  [[ "$GPUS" == all || "$GPUS" =~ ^(device=)?[0-9]+(,[0-9]+)*$ ]] \
    || die "--gpus must be all or GPU indices such as 0 or 0,1 (device=0,1), got '$GPUS'"
  DEVICES="${GPUS#device=}"
  if [[ "$GPUS" == all ]]; then GPU_ARG=all
  elif [[ "$DEVICES" == *,* ]]; then GPU_ARG="\"device=$DEVICES\""   # docker reads a list as CSV: quoted
  else GPU_ARG="device=$DEVICES"; fi
  CONTAINER_NAME="triton-bls-$$"
  CMD=(docker run --rm --name "$CONTAINER_NAME" --gpus "$GPU_ARG" --shm-size "$SHM_SIZE"
       -p "$ADDRESS:$HTTP_PORT:8000" -p "$ADDRESS:$GRPC_PORT:8001" -p "$ADDRESS:$METRICS_PORT:8002"
       -v "$REPOSITORY:/models:ro")
  if (( HAS_ENV )); then
    # The Python models activate the environment inside their own directories.
    CMD+=("$CONTAINER_IMAGE" tritonserver --model-repository=/models "${SERVER_ARGS[@]}")
  else
    echo "run_triton.sh: warning: the repository has no execution environment; the container" \
         "will pip-install envs/requirements-serving.txt at every start (needs network)." \
         "Assemble with --execution-env (docs/deploy.md) instead." >&2
    CMD+=(-v "$ROOT/envs/requirements-serving.txt:/opt/requirements-serving.txt:ro"
          "$CONTAINER_IMAGE"
          bash -c "pip install -q -r /opt/requirements-serving.txt && exec tritonserver --model-repository=/models ${SERVER_ARGS[*]}")
  fi
  echo "run_triton.sh: container $CONTAINER_IMAGE (export torch $EXPORT_TORCH${ENV_PYTHON:+, environment Python $ENV_PYTHON}), --shm-size $SHM_SIZE" >&2
  if (( DRY_RUN )); then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || die "container mode needs a running Docker engine"
  trap stop INT TERM EXIT
  "${CMD[@]}" &
  SERVER_PID=$!
  wait_ready "$ADDRESS"
else
  die "--mode must be auto, embedded or container, got '$MODE'"
fi

wait "$SERVER_PID"
