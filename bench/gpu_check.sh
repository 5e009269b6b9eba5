#!/usr/bin/env bash
# The GPU check on a CUDA machine that reaches no package index (the device tool's): installs what
# the machine lacks from wheels carried in .whl/, installs livescope itself without dependencies,
# then runs bench/gpu_check.py (JSON on stdout; arguments are passed on). Under 8 minutes.
#
# Prepare here (Python 3.12 there):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     pymmcore-plus useq-schema ome-writers ome-types pyzmq
# onnxruntime-gpu's wheel (about 255 MB) is larger than one call may carry (64 MiB): split it
# (split -b 60M onnxruntime_gpu-*.whl .whl/ort.part-) and carry the parts in successive calls to
# the same warm machine; this script joins them. Without them, the machine's own onnxruntime runs,
# and the JSON says which providers it has.
set -euo pipefail
cd "$(dirname "$0")/.."
site=/tmp/livescope-site
mkdir -p "$site"
if compgen -G ".whl/ort.part-*" >/dev/null; then
  cat .whl/ort.part-* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" /tmp/onnxruntime_gpu-*.whl
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" .
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
exec timeout 450 python3 bench/gpu_check.py "$@"
