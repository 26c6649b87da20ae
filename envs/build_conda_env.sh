#!/usr/bin/env bash
# Build the Python execution environment for NVIDIA's tritonserver container: a conda
# environment from envs/conda-serving.yml, checked, then packed by conda-pack into an
# archive that `python -m export ... --execution-env ARCHIVE` places in the repository.
#
#   envs/build_conda_env.sh                       # Python 3.12 -> build/envs/serving-conda-py3.12.tar.gz
#   envs/build_conda_env.sh --python 3.10         # for tritonserver 24.11 and older
#   envs/build_conda_env.sh --output FILE.tar.gz --prefix DIR --spec FILE
#
# Needs conda (or mamba: --conda mamba) and conda-pack (`conda install -n base -c
# conda-forge conda-pack`, or `pip install conda-pack`), and the network to reach the
# channels. The Python must be the container stub's (docs/deploy.md, version table).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=3.12  # the version (MAJOR.MINOR) here, not an interpreter
SPEC="$ROOT/envs/conda-serving.yml"
REQUIREMENTS="$ROOT/envs/requirements-serving.txt"
CONDA="${CONDA:-conda}"
CONDA_PACK="${CONDA_PACK:-conda-pack}"
OUTPUT=""
PREFIX=""

SCRIPT=build_conda_env.sh HELP=2,12p
source "$ROOT/envs/cli.sh"
parse_options "python spec output prefix conda" "" "$@"
PYVER="$PYTHON"

[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || die "--python must be MAJOR.MINOR such as 3.12, got '$PYVER'"
[[ -f "$SPEC" ]] || die "no environment spec at $SPEC"
grep -Eq '^[[:space:]]*-[[:space:]]*python=' "$SPEC" || die "$SPEC pins no python=X.Y to replace"
command -v "$CONDA" >/dev/null || die "'$CONDA' not found: install Miniforge (conda) or pass --conda mamba"
command -v "$CONDA_PACK" >/dev/null || die "'$CONDA_PACK' not found: conda install -n base -c conda-forge conda-pack (or pip install conda-pack)"
OUTPUT="${OUTPUT:-$ROOT/build/envs/serving-conda-py$PYVER.tar.gz}"
PREFIX="${PREFIX:-$ROOT/build/envs/conda-py$PYVER}"
[[ "$OUTPUT" == *.tar.gz ]] || die "--output must end in .tar.gz (what the Python backend unpacks), got '$OUTPUT'"
mkdir -p "$(dirname "$OUTPUT")" "$(dirname "$PREFIX")"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK" "$OUTPUT.tmp.$$"' EXIT
# The spec with this Python, and its requirements file by absolute path (conda runs pip
# from a directory of its own choosing).
sed -E -e "s/^([[:space:]]*-[[:space:]]*python)=.*/\1=$PYVER/" \
       -e "s#-r[[:space:]]+requirements-serving.txt#-r $REQUIREMENTS#" "$SPEC" > "$WORK/environment.yml"

# Packages in ~/.local would leak into the environment and be missing from the archive
# (the Python backend's README asks for this before installing).
export PYTHONNOUSERSITE=True
rm -rf "$PREFIX"
"$CONDA" env create --prefix "$PREFIX" --file "$WORK/environment.yml"

# What the Python models import, from this environment, with the stub's numpy<2 (a
# file, not stdin: `conda run` does not forward stdin).
cat > "$WORK/check.py" <<'PY'
import sys
want = sys.argv[1]
have = f"{sys.version_info[0]}.{sys.version_info[1]}"
if have != want:
    sys.exit(f"environment Python is {have}, expected {want}")
import numpy, cv2, PIL, pycocotools.mask  # noqa: F401
if int(numpy.__version__.split(".")[0]) >= 2:
    sys.exit(f"numpy {numpy.__version__}: the stub needs numpy<2")
PY
"$CONDA" run --no-capture-output --prefix "$PREFIX" python "$WORK/check.py" "$PYVER" \
  || die "the environment at $PREFIX is not usable (see above)"

"$CONDA_PACK" --prefix "$PREFIX" --output "$OUTPUT.tmp.$$" --format tar.gz --force
mv "$OUTPUT.tmp.$$" "$OUTPUT"
echo "build_conda_env.sh: $OUTPUT ready (Python $PYVER); place it with:"
echo "  python -m export assemble --model build/repository/mask_rcnn/1/model.pt --repository build/repository --execution-env $OUTPUT"
