#!/usr/bin/env bash
# GPU checks in one go, for a CUDA machine with vLLM installed (pip install -e '.[vllm]'):
# the GPU and vLLM tests (CUDA merges, the vLLM push, a search with evaluator=vllm) and the
# per-candidate figures of both backends on the small toy family.
#
#   bash scripts/gpu_checks.sh [LOG_DIR]      # DEADLINE=seconds (default 540) caps the run
#
# Each step writes LOG_DIR/<step>.log and prints its exit status and tail; a step that would
# start with under 20 s left is skipped, so the run ends inside a fixed time slot. pytest runs
# without its log capture: an engine start took 90 s longer under it (torch's debug trace).
LOG_DIR=${1:-gpu-logs}
mkdir -p "$LOG_DIR"
T0=$(date +%s)
DEADLINE=${DEADLINE:-540}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
step() { # step NAME CAP command...
  local name=$1 cap=$2 l t s rc
  shift 2
  l=$(left)
  t=$((cap < l - 5 ? cap : l - 5))
  if [ "$t" -lt 20 ]; then
    echo "== $name skipped ($l s left)"
    return
  fi
  echo "== $name (limit $t s) at +$(($(date +%s) - T0)) s"
  s=$(date +%s)
  timeout -k 5 "$t" "$@" >"$LOG_DIR/$name.log" 2>&1
  rc=$?
  echo "== $name rc=$rc in $(($(date +%s) - s)) s"
  grep -v "step/s" "$LOG_DIR/$name.log" | tail -n 25
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
step setup 180 bash -c 'python3 -c "import torch, transformers, vllm; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__, \"vllm\", vllm.__version__)" && python3 -m evomerge toy --size small'
step push 330 python3 -m pytest -m vllm tests/evaluate/test_vllm_engine.py -k pushed -x -v -s -p no:cacheprovider -p no:logging --durations=0
step cuda 60 python3 -m pytest -m gpu tests/merge/test_cuda.py -v -p no:cacheprovider
step search 200 python3 -m pytest -m vllm tests/evaluate/test_vllm_engine.py -k search -x -v -p no:cacheprovider -p no:logging --durations=0
step bench_vllm 150 python3 scripts/bench_search.py --candidates 10 --json "$LOG_DIR/bench_vllm.json" models.toy_size=small evaluator=vllm evaluator.max_length=null evaluator.gpu_memory_utilization=0.3
step bench_hf_gpu 90 python3 scripts/bench_search.py --candidates 10 models.toy_size=small evaluator.device=cuda
echo "== done at +$(($(date +%s) - T0)) s"
