#!/bin/bash
# Session 11, call 2: GPU tests on HEAD, model offload with the streamed encoder, first vs second request (cold Triton cache), fresh CLI vs diffusers script.
cd "$(dirname "$0")/.."
O=$OUT; t0=$(date +%s)
el(){ echo "[$(( $(date +%s)-t0 ))s] $*" | tee -a $O/steps.log; }
el test-gpu
timeout 200 scripts/test-gpu -q -rA > /tmp/test-gpu.log 2>&1; echo "rc=$?" >> /tmp/test-gpu.log
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" /tmp/test-gpu.log | tail -40 > $O/test-gpu.log; tail -60 /tmp/test-gpu.log >> $O/test-gpu.log
export PYTHONPATH=/tmp/helios-site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
el ckpt
[ -f /tmp/h14/model_index.json ] || python3 bench/random_checkpoint.py /tmp/h14 --variant distilled --text-encoder released > /tmp/ckpt.log 2>&1
el folder:model
timeout 150 python3 bench/bench_offload.py --folder /tmp/h14 --configs folder:model --timeout 140 --out /tmp/off-model > /tmp/off.log 2>&1
{ cat /tmp/off-model/offload.md 2>/dev/null || tail -5 /tmp/off.log; } >> $O/offload.md
el first-request-cold
export TRITON_CACHE_DIR=/tmp/tc-cold; rm -rf $TRITON_CACHE_DIR
timeout 150 python3 bench/first_request.py --model /tmp/h14 --out $O/cold > $O/first-cold.log 2>&1; el "rc=$?"
el first-request-warm
timeout 120 python3 bench/first_request.py --model /tmp/h14 --out $O/warm > $O/first-warm.log 2>&1; el "rc=$?"
left=$(( 585 - ($(date +%s)-t0) ))
el "fresh ($left s)"
export TRITON_CACHE_DIR=/tmp/tc-fresh TORCHINDUCTOR_CACHE_DIR=/tmp/ti-fresh; rm -rf /tmp/tc-fresh /tmp/ti-fresh
[ $left -gt 90 ] && timeout $left python3 bench/bench_fresh.py --model /tmp/h14 --device cuda --height 384 --width 640 --num-frames 240 --pyramid-steps 1 1 1 --rows helios diffusers --timeout $((left-5)) --out /tmp/fresh > /tmp/fresh.log 2>&1
cp /tmp/fresh/fresh.md $O/ 2>/dev/null || tail -20 /tmp/fresh.log > $O/fresh.log
el done
