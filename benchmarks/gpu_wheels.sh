#!/usr/bin/env bash
# The wheels the GPU machine's image lacks, for benchmarks/gpu_check.sh: mlflow and optuna at the
# versions of this checkout's .venv, with every dependency the image does not already hold, for
# CPython 3.12 on manylinux x86_64 (the image's python3). Run it here, where PyPI is reachable:
#
#   bash benchmarks/gpu_wheels.sh          # -> .whl/ (ignored through .git/info/exclude), prints its size
#
# then name the folder in the device call: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"]).
# The device README's limit is 64 MiB for the repo and the carried folders together; this set is
# about 27 MiB and the repo about 15 MiB. Environment:
#   DEST=.whl   PYVER=3.12   PY=.venv/bin/python (whose pip resolves, and whose mlflow/optuna
#   versions are carried)   MLFLOW_VERSION / OPTUNA_VERSION to override them
#   STRIP_UI=1  drop mlflow's web UI (mlflow/server/js, 7.6 MB of the 12 MB wheel): the check runs
#               no server. 0 keeps the wheel as published.
# psycopg2 (the server extra) is not carried: the device check uses a sqlite store.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
PYVER=${PYVER:-3.12}
STRIP_UI=${STRIP_UI:-1}
ABI=cp${PYVER/./}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
MLFLOW_VERSION=${MLFLOW_VERSION:-$(version mlflow)}
OPTUNA_VERSION=${OPTUNA_VERSION:-$(version optuna)}

# The image's Python packages (device/KINDS.md, "Python packages already there", read 2026-11-17).
# Carry one of these only for another version: they are dropped from the set below.
IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

# Carried even though the image has them: pure Python, backward compatible, and a floor that new
# pydantic/mlflow releases raise faster than an image is rebuilt (a stale one fails at import).
ALWAYS="typing-extensions"

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none
        "${PLATFORMS[@]}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "resolving mlflow==$MLFLOW_VERSION optuna==$OPTUNA_VERSION for cp${PYVER/./} manylinux x86_64 ..."
# A dry-run install against the target platform resolves the whole tree from the index's metadata
# alone (nothing is unpacked, and the image's large packages are never downloaded).
"$PY" -m pip install --quiet --dry-run --ignore-installed --report "$work/report.json" --target "$work/t" \
  "${TARGET[@]}" "mlflow==$MLFLOW_VERSION" "optuna==$OPTUNA_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)

"$PY" - "$work/report.json" "$IMAGE" "$ALWAYS" > "$work/need.txt" <<'EOF'
import json, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
image = {norm(n) for n in sys.argv[2].split()} - {norm(n) for n in sys.argv[3].split()}
for item in json.load(open(sys.argv[1]))["install"]:
    name = item["metadata"]["name"]
    if norm(name) not in image:
        print(f"{name}=={item['metadata']['version']}")
EOF

rm -rf "$DEST"
mkdir -p "$DEST"
# Never committed: ignored through this clone's .git/info/exclude (travels only when carried).
if info=$(git rev-parse --git-path info 2>/dev/null) && [ "$DEST" = .whl ]; then
  mkdir -p "$info"
  grep -qxF /.whl/ "$info/exclude" 2>/dev/null || { echo /.whl/ >> "$info/exclude"; echo "added /.whl/ to $info/exclude"; }
fi
echo "downloading $(wc -l < "$work/need.txt") wheels the image lacks into $DEST/ ..."
"$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$DEST" -r "$work/need.txt" \
  2> >(grep -v "is ignored: it is neither" >&2)

if [ "$STRIP_UI" = 1 ]; then
  # mlflow's web UI (the built JavaScript) is only served by `mlflow server` / `mlflow ui`.
  "$PY" - "$DEST"/mlflow-[0-9]*.whl <<'EOF'
import os, sys, zipfile
src = sys.argv[1]
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        if info.filename.startswith("mlflow/server/js/"):
            continue
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not l.startswith(b"mlflow/server/js/"))
        zout.writestr(info, data)
os.replace(tmp, src)
print(f"stripped mlflow/server/js from {os.path.basename(src)}")
EOF
fi

# Every name once: two versions of one package stop the whole install on the device.
dups=$(ls "$DEST" | sed -E 's/-[0-9].*//' | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
[ -z "$dups" ] || { echo "error: more than one wheel of: $dups" >&2; exit 1; }

n=$(ls "$DEST"/*.whl | wc -l)
echo "$n wheels, $(du -sh "$DEST" | cut -f1) in $DEST/:"
ls "$DEST" | sed 's/^/  /'
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
whl=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "the working tree that travels: $((tree / 1048576)) MiB + $DEST $((whl / 1048576)) MiB = $(((tree + whl) / 1048576)) MiB (limit 64 MiB)"
