#!/usr/bin/env bash
# Create the project's environment: .venv with Python 3.11 and requirements.txt.
# Idempotent: re-running after requirements.txt changes updates the venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"

command -v "$PYTHON" >/dev/null || { echo "envs/setup.sh: $PYTHON not found; install Python 3.11 or set PYTHON=" >&2; exit 2; }
"$PYTHON" - <<'PY' || { echo "envs/setup.sh: Python 3.11 is required (the embedded server's stub must match it)" >&2; exit 2; }
import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# --progress-bar off: CI logs stay readable. torch is several GB; pip caches it.
"$VENV/bin/python" -m pip install --quiet --progress-bar off -r "$ROOT/requirements.txt"
"$VENV/bin/python" -c "import numpy, torch, torchvision, cv2, pytriton, tritonclient.grpc; assert numpy.__version__ < '2', numpy.__version__"
touch "$VENV/.installed"
echo "envs/setup.sh: environment ready in $VENV"
