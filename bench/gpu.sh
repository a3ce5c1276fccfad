#!/usr/bin/env bash
# The GPU measurements of issue 27 in one command: the DINO pretraining throughput of the 3-D ViT-B/12 against
# the target (>= 90 scans/s end to end on one H100), the MAE step, Extended Data Fig. 5 (every architecture's
# scans/s and peak memory at the paper's input size, bf16 autocast with fused attention), and downstream training
# (`fit`) in fp32 against bf16 autocast at the demo and paper sizes; and, after DINO's step, the library end to end
# on toy volumes (cohort, cache, DINO pretraining, fine-tuned / scratch / probes / few-shot, embeddings) on the GPU,
# each run recording the precision it computed in.
#
#     bench/gpu.sh [OUTDIR [STEP...]]   # default runs/bench_gpu, every step: dino smoke mae architectures precision
#     bench/gpu.sh OUT dino smoke; bench/gpu.sh OUT mae architectures precision   # two calls of <= 10 min each
#
# Each step writes its own log under OUTDIR and has its own time limit (dino 240 s, and 240 s more for its retry;
# smoke 240; mae 120; architectures 300; precision 180: at most 22 min in all, not yet measured on a GPU), so one
# that fails (a package missing, out of memory) leaves the others' numbers; DINO's step retries at half the batch
# when the paper's 64 does not fit. A machine without network: put wheels of the fmct dependencies its Python
# lacks in a folder and set FMCT_WHEELS to it (a stock CUDA PyTorch image typically lacks monai, platformdirs,
# nibabel, pydicom and nilearn, whose MNI152 templates the synthetic cohort is built on). Without a GPU the
# scripts measure the demo profile on the CPU instead.
set -u
out=${1:-runs/bench_gpu}
steps=" ${*:2} "
[ "$steps" = "  " ] && steps=" dino smoke mae architectures precision "
wanted() { [[ "$steps" == *" $1 "* ]]; }
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ -n "${FMCT_WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/fmct_site "$FMCT_WHEELS"/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/fmct_site"
fi

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, keep its log, show its end
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "== $name: exit $rc$([ $rc = 124 ] && echo " (stopped at its ${limit} s limit)")"
  return $rc
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())"
} > "$out/machine.log" 2>&1
cat "$out/machine.log"

if wanted dino; then
  step dino 240 "$py" bench/architectures.py --architectures vit --repeats 3
  if grep -q "OutOfMemoryError" "$out/dino.log"; then
    step dino_half_batch 240 "$py" bench/architectures.py --architectures vit --repeats 3 --dino-batch 32
  fi
fi
smoke() {  # the library end to end on toy volumes, in this device's precision: cohort, cache, DINO, downstream, embed
  export FMCT_DATA="$out/smoke/data" FMCT_CACHE="$out/smoke/cache" FMCT_RUNS="$out/smoke/runs"
  local fmct="$py -m fmct_lib.cli" enc="$out/smoke/runs/pretrain/synthetic_dino_f1_toy_s0/encoder.safetensors"
  $fmct synth --profile toy && $fmct cache --dataset synthetic --profile toy && $fmct pretrain --method dino --profile toy \
    && $fmct finetune --profile toy --task ich,sah --protocol finetune --protocol scratch --protocol linear \
         --protocol attentive --encoder "$enc" \
    && $fmct finetune --profile toy --task ich --protocol fewshot --shots 4 --encoder "$enc" \
    && $fmct embed --profile toy --encoder "$enc" --out "$out/smoke/embeddings.csv" \
    && grep -rh '"precision"' "$out/smoke/runs/downstream" | sort | uniq -c
}
export -f smoke; export out py
wanted smoke && step smoke 240 bash -c smoke
wanted mae && step mae 120 "$py" bench/pretrain.py --methods mae
wanted architectures && step architectures 300 "$py" bench/architectures.py --no-dino
wanted precision && step precision 180 "$py" bench/precision.py --profiles demo paper
echo "logs in $out"
