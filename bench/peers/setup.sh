#!/usr/bin/env bash
# Create each peer's own virtual environment under bench/peers/.venvs/ (git-ignored),
# for bench/peers.py. Not part of CI. Safe to re-run: a finished venv is kept.
#
#   bash bench/peers/setup.sh            # PYTHON=python3.11 to choose the interpreter
#
# Measurement venvs (the workers run in them):
#   litert  tensorflow (CPU) to build the training models, ai-edge-litert to run them
#   ortt    onnxruntime-training 1.19.2 (its last release), onnx, numpy
#   litert-flex  tensorflow 2.18.1, whose tf.lite.Interpreter still runs Flex ops
# (PyTorch eager and edgetune run in the project's own .venv: torch==2.13.0 is there.)
#
# Footprint venvs, holding only what a device installs for each runtime:
#   footprint-edgetune  numpy, onnxruntime, Pillow, safetensors (edgetune's runtime)
#   footprint-litert    ai-edge-litert, numpy, Pillow
#   footprint-ortt      onnxruntime-training, numpy
#   footprint-torch     torch (CPU), numpy, Pillow
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
mkdir -p .venvs

# The same versions as the project's venv where a package is shared, so sizes compare.
NUMPY=numpy==2.4.6
PILLOW=Pillow==13.0.0
ONNXRUNTIME=onnxruntime==1.31.1
SAFETENSORS=safetensors==0.8.0
TENSORFLOW=tensorflow==2.21.0
TENSORFLOW_FLEX=tensorflow==2.18.1
LITERT=ai-edge-litert==2.3.0
ORTT=onnxruntime-training==1.19.2
# onnx 1.18+ writes IR versions that onnxruntime 1.19 cannot load (it reads IR <= 10):
# the optimizer model generate_artifacts writes would not load.
ONNX=onnx==1.17.0
# torch: always pinned. The CPU wheel of this version is what this machine's pip finds;
# an unpinned torch would pull gigabytes of CUDA packages.
TORCH=torch==2.13.0

make_venv() {
    local name=$1
    shift
    local dir=.venvs/$name
    if [ -f "$dir/.installed" ]; then
        echo "$dir: already set up"
        return
    fi
    echo "$dir: installing $*"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet "$@"
    touch "$dir/.installed"
}

make_venv litert "$TENSORFLOW" "$LITERT" "$NUMPY"
make_venv ortt "$ORTT" "$ONNX" "$NUMPY"
# The last tensorflow whose tf.lite.Interpreter still links the Flex delegate (Select TF
# ops): runs the on-device training guide's own formulation, for comparison.
make_venv litert-flex "$TENSORFLOW_FLEX" numpy
make_venv footprint-edgetune "$NUMPY" "$ONNXRUNTIME" "$PILLOW" "$SAFETENSORS"
make_venv footprint-litert "$LITERT" "$NUMPY" "$PILLOW"
make_venv footprint-ortt "$ORTT" "$NUMPY"
make_venv footprint-torch "$TORCH" "$NUMPY" "$PILLOW"
echo "peer venvs ready in $(pwd)/.venvs"
