#!/bin/bash
# Session 10: one engine's rows beside the core at one step setting, fp32 VAE resident.
# usage: .whl/run-rows.sh ENGINE STEPS "ROWS" SECONDS
cd "$(dirname "$0")/.."
engine=$1; steps=$2; O=$OUT; export OUT=/tmp/eg; t0=$(date +%s)
el(){ echo "[$(( $(date +%s)-t0 ))s] $*" | tee -a $O/steps.log; }
export ENGINES_GPU_DIFFUSERS=${DIFF:-0} ENGINES_GPU_REPEATS=1 ENGINES_GPU_STEPS=$steps
el "run: $engine $steps $3"
ENGINES_GPU_ROWS="$3" timeout $4 bench/engines-gpu $engine > /tmp/eg1.log 2>&1; el "rc=$?"
d=/tmp/eg/$engine-${steps//,/}; cp $d/compare.md $O/$engine-${steps//,/}.md 2>/dev/null; tail -30 /tmp/eg1.log > $O/$engine-${steps//,/}.log
ls -la $d/work/*/ >> $O/steps.log 2>&1
grep -h "Helios core" $d/work/*/server.log 2>/dev/null | sort | uniq -c | head >> $O/steps.log
el done
