#!/usr/bin/env bash
# The CUDA check (docs/speed.md, "On a GPU"): the device-parametrised core tests on CUDA (one train() step against the
# reference Algorithm 1, save/load, exact resume, export), then training throughput on CUDA: PaperDDPG at SB3's math
# (A), SB3's DDPG (B), a bare PyTorch loop (C) and PaperDDPG with the paper's defaults (D), interleaved in one process.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR (default: $OUT or .) receives the logs and the JSON
#
# Without CUDA it is a dry run of the same steps on the CPU (the tests' CPU cases, a shorter benchmark).
# Needs the package importable (pip install -e . or PYTHONPATH=.) with stable-baselines3, gymnasium, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-.}}
mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    device=cuda steps=2000
else
    device=cpu steps=300
    echo "No CUDA device: dry run on the CPU"
fi
python3 -c "import torch, stable_baselines3 as sb3; print('torch', torch.__version__, 'sb3', sb3.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$out/gpu_versions.txt"

# 1. The core tests on the device (tests/test_devices.py, and the pixel update in tests/test_sameness.py; ids end in
#    "on_cpu" / "on_cuda")
python3 -m pytest tests/test_devices.py tests/test_sameness.py -q -p no:cacheprovider -k "on_$device" 2>&1 | tee "$out/gpu_tests.log"

# 2. Throughput on the device, Pendulum-v1 (no MuJoCo needed), 3 interleaved rounds
python3 benchmarks/throughput.py --device "$device" --envs Pendulum-v1 --pairs 3 --train-steps "$steps" --long-steps 0 \
    --out "$out/gpu_throughput.json" 2>&1 | tee "$out/gpu_throughput.log"
