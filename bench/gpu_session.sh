#!/usr/bin/env bash
# The figures the data-path issue ("Feed the GPU") asks of a GPU, in one device session of about
# five minutes on an H200, each step bounded so that one slow step cannot eat the others' time:
#   1. the Sentinel-2 patch template (bf16, channels_last) on packed 6×224×224 patches: NVML median
#      utilization and data wait (goal: ≥ 90 % and < 5 %), against the same run in plain fp32;
#   2. the trainer against a hand-written loop on resnet18 (goal: ratio ≤ 1.02, weights identical);
#   3. `resume_difference.py --device cuda`: the resumed run's weights against the device's own
#      run-to-run difference;
#   4. `verify_device.py --device cuda`: how far `wf verify`'s recomputed figures and re-trained epochs
#      land from what the run recorded (the GPU tolerances runners/run_claims.py applies).
#
#   bash bench/gpu_session.sh [OUT_DIR]        (default: $OUT on the device machine, else bench/results)
#
# Run from the repository root with a python3 that holds torch and torchvision (PYTHON=... to choose
# another). wf's other dependencies come from the environment: where the machine's image lacks one
# (pydantic on the lent H200s), install its wheels first, as bench/README.md says.
set -uo pipefail
out=${1:-${OUT:-bench/results}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
stamp=$(date -u +%Y-%m-%d)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu_$stamp.machine"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu_$stamp.machine"
timeout 210 "$py" bench/sentinel2_template_gpu.py --train 4096 --epochs 3 --batch 128 2>&1 | tee "$out/gpu_template_$stamp.log"
timeout 150 "$py" bench/trainer_overhead.py --device cuda --model resnet18 --repeats 3 --epochs 2 2>&1 \
  | tee "$out/gpu_overhead_$stamp.log"
timeout 120 "$py" bench/resume_difference.py --device cuda --epochs 2 2>&1 | tee "$out/gpu_resume_$stamp.log"
timeout 120 "$py" bench/verify_device.py --device cuda --repeats 3 2>&1 | tee "$out/gpu_verify_$stamp.log"
