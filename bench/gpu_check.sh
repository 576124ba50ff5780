#!/usr/bin/env bash
# One prepared GPU check of ft-assets, under 8 minutes on one H100, offline:
#   1. CUDA detection (nvidia-smi, torch) and the project's own detect_device();
#   2. the tiny-model phase chain with device = "cuda": train (python -m ft_assets.phases.training) and
#      batched generation (python -m ft_assets.phases.generation) of the embedded tiny Llama;
#   3. bench/gpu_train.py: bf16 LoRA and 4-bit QLoRA steps of the project's train() on a random ~0.5B
#      Llama-shaped model, tokens/s and MFU;
#   4. bench/gpu_inference.py: batched generation tokens/s, the seed's loop, and the vLLM path when vLLM
#      is installed.
# Each step runs under its own time limit and a failure does not stop the others; the summary at the end
# lists every step's status and seconds. Exit status: 0 when all steps passed.
#
# What it expects on the GPU machine: python3 with torch (CUDA build), transformers, accelerate, peft,
# tokenizers, safetensors, pandas, pyarrow, matplotlib (the lent machines' image has them). The rest of
# what the phases import travels as wheels in .whl/ (git-ignored), made here, on a machine with PyPI:
#     bench/gpu_check.sh fetch-wheels      # ~59 MB: pydantic, trl, datasets, bitsandbytes, ... (py3.12)
# and installed there into /tmp/site (PYTHONPATH), never over the image's packages. The project itself is
# used from this checkout (PYTHONPATH), not installed. The Dagster/MLflow chain is not run there: those
# wheels do not fit the 64 MiB that travels with a device call; the CPU test suite covers it.
#
# Usage on the GPU machine, from the repository root:  bench/gpu_check.sh [--quick]
#   --quick: fewer steps and rows (about 3 minutes).   Logs go to $OUT/gpu_check.log when $OUT is set.
# GPU_CHECK_DEVICE=cpu bench/gpu_check.sh --quick checks the script's plumbing on a CPU-only machine.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
# The versions this project is tested with (pyproject.toml); about 59 MB of the 64 MiB a device call carries.
WHEELS=(pydantic==2.* pydantic-core annotated-types typing-inspection trl==1.16.* datasets==5.2.*
        "dill<0.4.2" "multiprocess<0.70.20" bitsandbytes==0.50.2 transformers==5.24.* tomli-w)

if [[ "${1:-}" == "fetch-wheels" ]]; then
  venv="${VENV:-.venv}/bin/python"
  pins=()
  for spec in "${WHEELS[@]}"; do
    name="${spec%%[=<>]*}"
    # the venv's exact version where it has one (pydantic-core must match pydantic exactly)
    version=$("$venv" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null) \
      && pins+=("$name==$version") || pins+=("$spec")
  done
  mkdir -p .whl  # wheels already there are kept (pip skips them)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}" || exit 1
  du -sh .whl && ls .whl
  exit 0
fi

QUICK=0; [[ "${1:-}" == "--quick" ]] && QUICK=1
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
LOG="${OUT:-/tmp}/gpu_check.log"
WORK="$(mktemp -d /tmp/ft-assets-gpu-check.XXXXXX)"
exec > >(tee "$LOG") 2>&1
export ROOT PYTHON QUICK DEVICE WORK
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export MLFLOW_DISABLE_TELEMETRY=true RAGAS_DO_NOT_TRACK=true

declare -a SUMMARY=()
step() {  # step NAME LIMIT_S FUNCTION: the function runs in a child bash under the limit
  local name="$1" limit="$2" function="$3"
  echo; echo "=== $name (limit ${limit}s) ==="
  local started=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "$function"
  local status=$?
  local verdict="ok"; [[ $status -eq 124 ]] && verdict="TIMEOUT"; [[ $status -ne 0 && $status -ne 124 ]] && verdict="FAILED ($status)"
  SUMMARY+=("$(printf '%-28s %-12s %4ss' "$name" "$verdict" $((SECONDS - started)))")
  return $status
}

install_wheels() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    echo "$PYTHON is not Python 3.12, which the wheels in .whl/ are for: using what it already has"
  elif compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  else
    echo "no .whl/ folder: using what $PYTHON already has (run 'bench/gpu_check.sh fetch-wheels' where PyPI is reachable)"
  fi
}
export PYTHONPATH="$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

cuda_detection() {
  [[ "$DEVICE" == "cpu" ]] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || return 1
  "$PYTHON" - <<'EOF'
import importlib.metadata as m
import os
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if os.environ["DEVICE"] == "cuda":
    assert torch.cuda.is_available(), "torch sees no CUDA device"
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
for name in ("transformers", "accelerate", "peft", "trl", "datasets", "bitsandbytes", "pydantic", "vllm"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} (not installed)")
from ft_assets.phases.models import detect_device
info = detect_device("auto")
print("ft_assets detect_device:", info)
assert info.device == os.environ["DEVICE"], info
assert info.device == "cpu" or info.dtype == "bfloat16", info
EOF
}

tiny_chain() {
  local config="$WORK/tiny-cuda.toml" steps=20
  [[ $QUICK -eq 1 ]] && steps=8
  cat > "$config" <<EOF
[fine_tuner]
base_model_id = "embedded:tiny-llama"
training_data_id = "$ROOT/data/demo/train.jsonl"
validation_data_id = "$ROOT/data/demo/validation.jsonl"
max_steps = $steps
per_device_train_batch_size = 8
rank = 4
lora_alpha = 8
max_length = 256
logging_steps = 5
save_steps = 10
device = "$DEVICE"

[inferencer]
testing_data_id = "$ROOT/data/demo/test.jsonl"
batch_size = 32
max_new_tokens = 16
device = "$DEVICE"

[pipeline]
artifacts_root = "$WORK/artifacts"
EOF
  "$PYTHON" -m ft_assets.phases.training --config "$config" --output "$WORK/adapter" || return 1
  "$PYTHON" -m ft_assets.phases.generation --config "$config" --model "$WORK/adapter" \
    --output "$WORK/inference.jsonl" || return 1
  "$PYTHON" - "$WORK" <<'EOF'
import json, os, sys
from pathlib import Path
work = Path(sys.argv[1])
info = json.loads((work / "adapter" / "ft_assets_model.json").read_text())
rows = [json.loads(line) for line in (work / "inference.jsonl").read_text().splitlines()]
print("trained on", info["device"], "| inference rows", len(rows),
      "| generated tokens", sum(r["completion_tokens"] for r in rows))
assert info["device"]["device"] == os.environ["DEVICE"] and len(rows) == 60
EOF
}

gpu_train() {
  [[ -f bench/gpu_train.py ]] || { echo "bench/gpu_train.py not in this checkout: skipped"; return 0; }
  local steps=20; [[ $QUICK -eq 1 ]] && steps=8
  "$PYTHON" bench/gpu_train.py --steps "$steps"
}

gpu_inference() {
  [[ -f bench/gpu_inference.py ]] || { echo "bench/gpu_inference.py not in this checkout: skipped"; return 0; }
  local args=(--rows 256 --batch-sizes 16,64,256 --max-new-tokens 128 --loop-rows 8)
  [[ $QUICK -eq 1 ]] && args=(--rows 64 --batch-sizes 16,64 --max-new-tokens 64 --loop-rows 4)
  "$PYTHON" bench/gpu_inference.py "${args[@]}"
}

export -f install_wheels cuda_detection tiny_chain gpu_train gpu_inference
started=$SECONDS
# limits add up to 465 s, so the whole check ends inside 8 minutes
step "install wheels" 60 install_wheels
step "detect CUDA + detect_device" 45 cuda_detection || { echo "no usable $DEVICE device: stopping"; printf '%s\n' "${SUMMARY[@]}"; exit 1; }
step "tiny chain (device=$DEVICE)" 90 tiny_chain
step "bench/gpu_train.py" 150 gpu_train
step "bench/gpu_inference.py" 120 gpu_inference
echo; echo "=== summary ($((SECONDS - started)) s; log: $LOG) ==="
printf '%s\n' "${SUMMARY[@]}"
rm -rf "$WORK"
! printf '%s\n' "${SUMMARY[@]}" | grep -qv " ok "
