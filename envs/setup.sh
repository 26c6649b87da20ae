#!/usr/bin/env bash
# Create the project's environment: .venv with Python 3.10, 3.11 or 3.12 and
# requirements.txt. The embedded server's wheel (nvidia-pytriton) carries a Python backend
# stub per Python version; run_triton.sh picks the one of the venv's Python.
#
#   envs/setup.sh                      # python3.11, else python3.12, else python3.10, else python3
#   PYTHON=python3.12 envs/setup.sh    # that one (a name on PATH or a path)
#   envs/setup.sh --which              # print the interpreter it would use, and stop
#
# Idempotent: re-running after requirements.txt changes updates the venv; a venv of
# another Python version than the one chosen is made again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
# torch 2.14 and numpy 1.26 publish wheels for these; the server's stubs exist for 3.8-3.13.
SUPPORTED=(3.11 3.12 3.10)

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

if [[ -n "${PYTHON:-}" ]]; then
  CANDIDATES=("$PYTHON")
else
  CANDIDATES=(python3.11 python3.12 python3.10 python3)
fi
CHOSEN="" VERSION=""
for candidate in "${CANDIDATES[@]}"; do
  # A name may be on PATH and still not run (a pyenv shim of a version not selected).
  v="$(version_of "$candidate")" || continue
  if [[ " ${SUPPORTED[*]} " == *" $v "* ]]; then CHOSEN="$candidate" VERSION="$v"; break; fi
done
if [[ -z "$CHOSEN" ]]; then
  echo "envs/setup.sh: needs Python 3.10, 3.11 or 3.12 (torch 2.14 and numpy 1.26 have" \
       "wheels for those); tried: ${CANDIDATES[*]}. Install one, or name it:" \
       "PYTHON=/path/to/python3.12 make test" >&2
  exit 2
fi
if [[ "${1:-}" == --which ]]; then echo "$CHOSEN $VERSION"; exit 0; fi

if [[ -x "$VENV/bin/python" && "$(version_of "$VENV/bin/python" || true)" != "$VERSION" ]]; then
  echo "envs/setup.sh: $VENV is not Python $VERSION; making it again"
  rm -rf "$VENV"
fi
[[ -x "$VENV/bin/python" ]] || "$CHOSEN" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# --progress-bar off: CI logs stay readable. torch is several GB; pip caches it.
"$VENV/bin/python" -m pip install --quiet --progress-bar off -r "$ROOT/requirements.txt"
"$VENV/bin/python" -c "import numpy, torch, torchvision, cv2, pytriton, tritonclient.grpc; assert numpy.__version__ < '2', numpy.__version__"
touch "$VENV/.installed"
echo "envs/setup.sh: environment ready in $VENV (Python $VERSION)"
