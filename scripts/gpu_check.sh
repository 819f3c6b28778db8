#!/usr/bin/env bash
# The first thing to run on a lent GPU (at most 9 minutes): the CUDA test tier (tests/test_cuda.py, at most
# 5.5 min) and benchmarks/gpu_suite.py at paper scale (at most 3.5 min). Everything lands in
# benchmarks/results/gpu/ (override: PVDM_GPU_OUT): nvidia-smi.txt, tier.log, tier.xml, tier/<test>.json
# (what each test measured), suite.log, gpu_suite_<gpu>_<date>.{json,md}, throughput.json; the rates file
# is also copied to benchmarks/results/throughput.json, which `pvdm plan` reads. Exit status: 0 when both
# passed, 1 when either failed, 2 without a GPU.
#   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${PVDM_GPU_OUT:-benchmarks/results/gpu}"
if [ ! -x .venv/bin/python ]; then
    bash scripts/bootstrap.sh install || exit 1
fi
PY=.venv/bin/python
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')); nothing checked" >&2
    exit 2
fi
mkdir -p "$OUT/tier"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
start=$(date +%s)
PVDM_GPU_RESULTS="$OUT/tier" timeout 330 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
    --junitxml "$OUT/tier.xml" 2>&1 | tee "$OUT/tier.log"
tier=${PIPESTATUS[0]}
timeout 210 "$PY" benchmarks/gpu_suite.py --device cuda --scale paper --out-dir "$OUT" 2>&1 | tee "$OUT/suite.log"
suite=${PIPESTATUS[0]}
if [ -f "$OUT/throughput.json" ]; then
    cp "$OUT/throughput.json" benchmarks/results/throughput.json
fi
echo "gpu_check: tier exit $tier, suite exit $suite (124 = timed out), $(( $(date +%s) - start )) s; results in $OUT"
[ "$tier" -eq 0 ] && [ "$suite" -eq 0 ]
