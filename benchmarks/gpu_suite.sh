#!/usr/bin/env bash
# The GPU check of issue 20, in one call on a lent GPU machine (<= 8 minutes): SAM 2 parity with Meta's code on CUDA
# in float32 and bfloat16, and speed beside Meta's code at the four released sizes (image encoder, everything mode,
# video propagation, torch.compile) -- see benchmarks/gpu_parity.py. The device image has PyTorch but not Meta's
# sam2, hydra or this project's transformers version, and reaches no registry, so the wheels travel with the call.
#
#   bash benchmarks/gpu_suite.sh --prepare      # here: wheels for the device's Python 3.12 into .whl/ (~15 MB)
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=540)   # there: results in $OUT/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
if [[ "${1:-}" == "--prepare" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p "$WHEELS"
  PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$WHEELS" transformers==5.23.0 hydra-core==1.3.2 omegaconf==2.3.0
  # antlr4 and iopath come as sources: pure wheels built here. Meta's sam2 builds only beside torch (its setup
  # imports it): built in the reference venv without its CUDA ops (SAM2_BUILD_CUDA=0), then tagged pure Python
  python3 -m pip wheel -q --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3 iopath==0.1.10
  [[ -x .venv-ref/bin/python ]] || bash scripts/setup.sh --reference
  tmp=$(mktemp -d)
  SAM2_BUILD_CUDA=0 .venv-ref/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$tmp" sam2==1.1.0
  .venv-ref/bin/python -m pip install -q wheel
  .venv-ref/bin/python -m wheel tags --python-tag py3 --abi-tag none --platform-tag any --remove "$tmp"/sam2-*.whl
  mv "$tmp"/sam2-*.whl "$WHEELS"/
  ls -la "$WHEELS"
  exit 0
fi
OUT=${OUT:-test-artifacts/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, sam2; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 460 python3 benchmarks/gpu_parity.py --out "$OUT/gpu.json" --rounds 3 2>&1 | tee "$OUT/log.txt"
