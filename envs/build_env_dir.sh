#!/usr/bin/env bash
# Build a relocatable Python execution environment as a directory, for the Python
# backend's EXECUTION_ENV_PATH, without conda: what conda-pack would unpack, made from a
# plain CPython install (this machine's stand-in for envs/build_conda_env.sh).
#
#   envs/build_env_dir.sh                                 # build/envs/serving-py<venv's version>
#   envs/build_env_dir.sh --python python3.12 --output DIR [--requirements FILE] [--archive]
#
# The Python backend runs `source ENV/bin/activate && exec env LD_LIBRARY_PATH=ENV/lib:...
# triton_python_backend_stub ...`; the stub embeds libpython, so the environment needs
# its own stdlib, libpython and site-packages, and an activate script that points the
# embedded interpreter at them (PYTHONHOME). A venv would not do: its stdlib stays in the
# base installation, outside the directory that moves into the model repository.
#
# The environment's Python must be the stub's: the venv's for the embedded server here
# (nvidia-pytriton's stub for that version; the default), 3.12 in NVIDIA's 24.12+ containers.
# Rebuilt only when this script, the requirements or the interpreter change (a stamp
# beside the output records them); --force rebuilds anyway. --archive also writes
# OUTPUT.tar.gz (the form conda-pack produces; the backend unpacks it under /tmp).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
REQUIREMENTS="$ROOT/envs/requirements-serving.txt"
OUTPUT=""
FORCE=0
ARCHIVE=0

SCRIPT=build_env_dir.sh HELP=2,19p
source "$ROOT/envs/cli.sh"
parse_options "python requirements output" "archive force" "$@"

command -v "$PYTHON" >/dev/null || die "no Python '$PYTHON' (set --python)"
[[ -f "$REQUIREMENTS" ]] || die "no requirements file at $REQUIREMENTS"

# The base installation behind $PYTHON (a venv's python is resolved to its base): its
# version, stdlib, shared libpython and real executable.
read -r PYVER BASE_EXE STDLIB LIBDIR LDLIB < <("$PYTHON" - <<'EOF'
import os, sys, sysconfig
base = sys.base_prefix
paths = sysconfig.get_paths(vars={"base": base, "platbase": base, "installed_base": base})
print(f"{sys.version_info[0]}.{sys.version_info[1]}",
      os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
      paths["stdlib"], sysconfig.get_config_var("LIBDIR") or "-",
      sysconfig.get_config_var("INSTSONAME") or "-")
EOF
) || die "cannot query $PYTHON"
[[ -f "$LIBDIR/$LDLIB" ]] || die "$PYTHON has no shared libpython ($LIBDIR/$LDLIB); the stub needs one: use a Python built with --enable-shared"
OUTPUT="${OUTPUT:-$ROOT/build/envs/serving-py$PYVER}"
mkdir -p "$(dirname "$OUTPUT")"
OUTPUT="$(cd "$(dirname "$OUTPUT")" && pwd)/$(basename "$OUTPUT")"

STAMP="$OUTPUT.stamp"
WANT="$( { cat "$0" "$REQUIREMENTS"; echo "$BASE_EXE $PYVER $("$PYTHON" -c 'import sys; print(sys.version)')"; } | sha256sum | cut -d' ' -f1)"
if (( ! FORCE )) && [[ -d "$OUTPUT" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
   && { (( ! ARCHIVE )) || [[ -f "$OUTPUT.tar.gz" ]]; }; then
  echo "build_env_dir.sh: up to date: $OUTPUT (Python $PYVER)"
  exit 0
fi

TMP="$OUTPUT.tmp.$$"
trap 'rm -rf "$TMP" "$OUTPUT.tar.gz.tmp.$$"' EXIT
rm -rf "$TMP"
mkdir -p "$TMP/bin" "$TMP/lib"

# Interpreter and libpython: regular files, never symlinks (the model repository must
# hold none). The executable is what the embedded interpreter's path search finds.
cp "$BASE_EXE" "$TMP/bin/python$PYVER"
cp "$TMP/bin/python$PYVER" "$TMP/bin/python3"
cp "$LIBDIR/$LDLIB" "$TMP/lib/$LDLIB"

# The stdlib, less what a server never imports (tests, IDLE, Tk, lib2to3, ensurepip, the
# static library under config-*) and its installed packages; links are copied as files.
"$PYTHON" - "$STDLIB" "$TMP/lib/python$PYVER" <<'EOF'
import shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
top_level = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo",
             "lib2to3", "ensurepip"}
def ignore(directory, names):
    skip = {n for n in names if n == "__pycache__"}
    if Path(directory) == src:
        skip |= {n for n in names if n in top_level or n.startswith("config-")}
    return skip
shutil.copytree(src, dst, symlinks=False, ignore=ignore)
EOF

# The serving packages, from PyPI or the find-links of pip.conf, as wheels only (no
# compiler needed). --target installs for the interpreter that runs pip: $PYTHON.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --only-binary=:all: --target "$TMP/lib/python$PYVER/site-packages" -r "$REQUIREMENTS"
# Console scripts point at the build machine's interpreter; a server needs none.
rm -rf "$TMP/lib/python$PYVER/site-packages/bin"

cat > "$TMP/bin/activate" <<'EOF'
# Sourced by bash: the Python backend runs `source ENV/bin/activate && exec ... stub`.
# Paths are taken from this file's own location, so the directory may move (the model
# repository is copied, mounted, or unpacked from an archive under /tmp).
_triton_env="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_triton_env/bin:$PATH"
# The stub's embedded interpreter takes its stdlib and site-packages from here.
export PYTHONHOME="$_triton_env"
unset PYTHONPATH
export PYTHONNOUSERSITE=1
export LD_LIBRARY_PATH="$_triton_env/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TRITON_EXECUTION_ENV="$_triton_env"
unset _triton_env
EOF

# Check it as the backend will use it: activated, from a clean PATH, no venv around.
env -i HOME="${HOME:-/}" PATH=/usr/bin:/bin bash -c '
  source "$1/bin/activate" && exec "$1/bin/python3" - "$1" "$2"' _ "$TMP" "$PYVER" <<'EOF' || die "the environment in $TMP does not work (see above)"
import os, sys
env, version = sys.argv[1], sys.argv[2]
assert f"{sys.version_info[0]}.{sys.version_info[1]}" == version, sys.version
assert os.path.realpath(sys.prefix) == os.path.realpath(env), (sys.prefix, env)
import numpy, cv2, PIL, pycocotools.mask
for module in (numpy, cv2, PIL, pycocotools):
    assert os.path.realpath(module.__file__).startswith(os.path.realpath(env)), module.__file__
assert int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__}: the stub needs numpy<2"
EOF
find "$TMP" -type l | grep -q . && die "symlinks in the environment: $(find "$TMP" -type l | head -3)"

rm -rf "$OUTPUT"
mv "$TMP" "$OUTPUT"
if (( ARCHIVE )); then
  # Members relative to the environment's root, as conda-pack writes them.
  tar -C "$OUTPUT" -cf - . | gzip -1 > "$OUTPUT.tar.gz.tmp.$$"
  mv "$OUTPUT.tar.gz.tmp.$$" "$OUTPUT.tar.gz"
fi
echo "$WANT" > "$STAMP"
echo "build_env_dir.sh: environment ready in $OUTPUT (Python $PYVER, $(du -sh "$OUTPUT" | cut -f1))"
