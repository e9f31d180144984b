#!/usr/bin/env bash
# Install Label Studio into its own virtual environment (<repo>/.venv-ls) and Debian's chromium for the browser test.
# Idempotent: re-running skips what is already there. Label Studio pins label-studio-sdk==2.1.2, which is why it does
# not share maskloop's venv. Usage: scripts/install_label_studio.sh [--no-chromium]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MASKLOOP_LABEL_STUDIO_VENV:-$REPO_ROOT/.venv-ls}"
LS_SPEC="${MASKLOOP_LABEL_STUDIO_SPEC:-label-studio>=1.23,<1.24}"
PYTHON="${PYTHON:-python3}"
WITH_CHROMIUM=1
[[ "${1:-}" == "--no-chromium" ]] && WITH_CHROMIUM=0

if [[ -x "$VENV/bin/label-studio" ]] && "$VENV/bin/python" -c "import label_studio" 2>/dev/null; then
  echo "label-studio already installed in $VENV ($("$VENV/bin/python" -c 'import label_studio; print(label_studio.__version__)'))"
else
  echo "installing $LS_SPEC into $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "$LS_SPEC"
fi

if [[ "$WITH_CHROMIUM" == 1 ]]; then
  if command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]]; then
    echo "chromium already installed"
  elif command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium
  else
    echo "warning: no apt-get; install chromium yourself for the browser test (tests marked 'browser')" >&2
  fi
fi

echo "Label Studio executable: $VENV/bin/label-studio (override with MASKLOOP_LABEL_STUDIO_BIN)"
