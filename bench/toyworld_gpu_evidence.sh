#!/usr/bin/env bash
# The toy world's evidence on one GPU (issues 21 and 22), each step one device call of under 10 minutes:
#   bench/toyworld_gpu_evidence.sh decoder DIR   # the VAE's decoder trained on for 7 minutes (ghost dots), into DIR
#   bench/toyworld_gpu_evidence.sh suites DIR    # every evidence suite, 32 clips x 2 seeds, rows in 8 workers
# On the GPU image, carry the wheels of diffusers, structlog and cattrs (bench/README.md). Results go under DIR, and
# DIR/evidence.tar holds every suite's results.json, report.md, pareto.png and rows.jsonl.
set -uo pipefail
step=${1:?decoder or suites}
out=${2:?a folder for the results}
mkdir -p "$out"
nvidia-smi -L > "$out/device.txt" 2>&1
export PYTHONUNBUFFERED=1
case "$step" in
decoder)
  work=/tmp/decoder_work
  mkdir -p "$work"
  python3 -c "import torch; from diffusers import AutoencoderKL as A; A.from_pretrained('evs_framework/data/weights/toyworld/toy-sd/vae', torch_dtype=torch.float32).save_pretrained('$work/vae')" || exit 1
  python3 -m evs_framework.toyworld.train --stage decoder --work "$work" --seed 1 --steps 100000 --max-minutes 7 \
    --log-every 500 --save-every 0 --shape-weight 2 --border-weight 4 --lr 4e-4 2>&1 | tee "$out/decoder.log"
  cp "$work/decoder.json" "$out/"
  tar cf "$out/vae.tar" -C "$work" vae
  ;;
suites)
  for suite in toy_enhance toy_enhance_vc2 toy_edit toy_real_edit toy_style toy_videoelevator_own; do
    python3 -m evs_framework.cli bench "bench/suites/$suite.yaml" --out "$out/$suite" --workers 8 -q \
      > "$out/$suite.log" 2>&1
    echo "$suite $?" >> "$out/done.txt"
    (cd "$out" && tar rf evidence.tar "$suite"/results.json "$suite"/report.md "$suite"/pareto.png \
      "$suite"/rows.jsonl "$suite.log" 2>/dev/null)
  done
  ;;
*) echo "unknown step $step: give decoder or suites" >&2; exit 2 ;;
esac
