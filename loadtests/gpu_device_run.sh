#!/usr/bin/env bash
# loadtests/gpu_device_run.sh [BUDGET_S=330] [gpu_check options...]: the GPU check on a Hopper machine
# without network (the device tool's nvidia-h200: CUDA 13 nvidia-* libraries, Python 3.12, a CPU
# onnxruntime), once earlier device calls have carried into this checkout (docs/gpu.md):
#   .gpu/ort.part*, .gpu/SHA256, .gpu/unpack.sh  the onnxruntime-gpu 1.30 payload of ../shared/gpu/build-payload.sh
#   .gpu/data/                                   the SST-2 test and Multi30k test/val sentences
#   .whl/*.whl (and .whl-grpc/*.whl if needed)   the service's wheels the machine lacks
# It unpacks and installs them under /tmp/site, then runs `python -m loadtests.gpu_check` with the
# budget, writing gpu_check.json/.md/.log to $OUT (or /tmp/gpu_check). WORKERS/INSTANCES: the
# environment's SEQSERVE_WORKERS / SEQSERVE_INSTANCES, else 4 and 2, for the GPU and the CPU servers alike.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-330}
shift || true
out=${OUT:-/tmp/gpu_check}
site=/tmp/site
py=${PY:-python3}
mkdir -p "$out"
# onnxruntime (CPU) and onnxruntime-gpu never in one environment: the image's CPU build goes first
$py -m pip uninstall -y -q onnxruntime >/dev/null 2>&1 || true
# joins and checks the parts, extracts them, prints the exports (it stops, and so does this, on any error)
exports=$(PY=$py bash .gpu/unpack.sh .gpu "$site")
eval "$exports"
wheels=(.whl/*.whl)
[ -d .whl-grpc ] && wheels+=(.whl-grpc/*.whl)
$py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
export PYTHONPATH LD_LIBRARY_PATH PYTHONUNBUFFERED=1 SEQSERVE_DATA_DIR="$PWD/.gpu/data"
export SEQSERVE_WORKERS=${SEQSERVE_WORKERS:-4} SEQSERVE_INSTANCES=${SEQSERVE_INSTANCES:-2}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $py -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.__file__, o.get_available_providers())'
  $py -m loadtests.gpu_check --budget-s "$budget" --out "$out" "$@"
} 2>&1 | tee "$out/gpu_check.log"
