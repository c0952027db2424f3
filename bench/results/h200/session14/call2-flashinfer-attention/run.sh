#!/usr/bin/env bash
# FlashInfer fa3/sm90 single-prefill vs torch SDPA (cuDNN, FLASH) on one H200.
# Usage (from the repository root, on the GPU machine):  bash .whl/fi/run.sh
# Needs: python3 with torch (cu130).  Installs nothing; no network.
# Writes $OUT/fi_bench.txt (the table) and $OUT/fi_run.log (everything).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-/tmp/fi_out}"
mkdir -p "$OUT"
main() {
echo "== run.sh $(date -u +%FT%TZ) host=$(hostname) HERE=$HERE OUT=$OUT"
echo "== nvidia-smi"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit --format=csv 2>&1 || echo "(nvidia-smi failed)"
echo "== python3: $(command -v python3) $(python3 -V 2>&1)"
python3 -c 'import torch,os; print("torch", torch.__version__, "cuda", torch.version.cuda, "at", os.path.dirname(torch.__file__))' 2>&1
SP=$(python3 -c 'import torch,os; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null)
echo "== libcudart in torch site-packages (informational; the kernel links cudart statically):"
ls "$SP"/nvidia/*/lib/libcudart* "$SP"/nvidia/cu13/lib/libcudart* 2>/dev/null | sort -u || true
echo "== payload: $(ls -l "$HERE"/fi_payload.tar.xz 2>&1)"

STAGE=/tmp/fi_stage
rm -rf "$STAGE"
rc=0
python3 -u "$HERE/bench_fi.py" --stage "$STAGE" --out "$OUT" || rc=$?
echo "== bench_fi.py exit code $rc"
if [ ! -s "$OUT/fi_bench.txt" ]; then
  echo "!! no fi_bench.txt produced" | tee "$OUT/fi_bench.txt"
  [ "$rc" = 0 ] && rc=1
fi
return $rc
}

main 2>&1 | tee "$OUT/fi_run.log"
exit "${PIPESTATUS[0]}"
