#!/usr/bin/env bash
# GPU figures of BENCHMARKS.md, in one call of the device tool (a machine with one NVIDIA GPU, its own
# Python with PyTorch, and no package registry):
#
#   .venv/bin/python scripts/pack_builtin.py pack .devpack/e5-small-zh.npz    # here, once
#   wheels of what the image (Python 3.12, torch 2.11) lacks, into .whl/ (both folders in .git/info/exclude):
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl transformers==5.23.0 datasets==5.2.0 dill==0.4.1 \
#       multiprocess==0.70.19 fsspec==2026.9.0 OpenCC==1.4.2 cn2an==0.5.24 proces==0.1.7
#     .venv/bin/pip wheel --no-deps seqeval==1.2.2 jieba==0.42.1 -w .whl   # sdists only on PyPI
#   device run: bash scripts/gpu_session.sh [cv|bench|facts|all]   carry: .whl .devpack
#
# On a machine set up with scripts/setup.sh, the same figures are simply
#   nlp cv configs/gpu.yaml                         (full leave-one-document-out CV on the GPU)
#   python scripts/bench_infer.py --model DIR --batch-sizes 8 64 --copies 20 --repeat 2 --stages --no-pipeline
# Logs and summaries go to $OUT (default /tmp/gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
if [ -d .whl ]; then
  [ -d /tmp/site/transformers ] && [ -d /tmp/site/jieba ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
MODEL=builtin:e5-small-zh
if [ -f .devpack/e5-small-zh.npz ]; then
  [ -f /tmp/e5zh/config.json ] || $PY scripts/pack_builtin.py unpack .devpack/e5-small-zh.npz /tmp/e5zh || exit 1
  MODEL=/tmp/e5zh
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| datasets', datasets.__version__)" \
  | tee -a "$OUT/gpu.txt"

summarize() {  # per-fold seconds and samples/s of a CV folder
  $PY - "$1" <<'EOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
cv = json.loads((root / "cv.json").read_text())
for f in cv["folds"]:
    s = json.loads((root / Path(f["doc"]).stem / "train_summary.json").read_text())
    print(f"{f['doc']}: {f['seconds']:.1f} s, {f['samples_per_second']:.1f} samples/s, {s['steps']} steps, "
          f"{s['train_windows']} windows, device {s['device']}, {s['mixed_precision']}, span F1 "
          f"{f['spans']['micro']['f1']:.3f}")
p = cv["pooled"]["spans"]
print(f"sum of folds {cv['seconds']:.1f} s; pooled span F1 micro {p['micro']['f1']:.3f} | "
      + " ".join(f"{k} {p[k]['f1']:.3f}" for k in ("ENTITY", "METRIC", "VALUE", "PERIOD")))
EOF
}

if [ "$WHAT" = cv ] || [ "$WHAT" = all ]; then
  for cfg in ${CV_CONFIGS:-gpu seed}; do
    dir=/tmp/cv-$cfg
    rm -rf "$dir"
    start=$(date +%s%N)
    timeout ${CV_TIMEOUT:-400} $PY -m nlp cv configs/$cfg.yaml --set model=$MODEL --set train.device=cuda \
      --out "$dir" --quiet > "$OUT/cv-$cfg.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    echo "== nlp cv configs/$cfg.yaml on the GPU: rc $rc, wall $((ms / 1000)).$(printf %03d $((ms % 1000))) s" \
      | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] && summarize "$dir" | tee -a "$OUT/summary.txt" && cp "$dir/cv.md" "$OUT/cv-$cfg.md"
    tail -5 "$OUT/cv-$cfg.log"
  done
fi

if [ "$WHAT" = bench ] || [ "$WHAT" = all ]; then
  # the inference table of BENCHMARKS.md: a model trained like the default run's split (000-003, dev 004)
  model=${BENCH_MODEL:-/tmp/g}
  [ -d "$model" ] || $PY -m nlp train configs/gpu.yaml --set model=$MODEL --out $model --force --quiet 2>&1 | tail -3
  B="timeout ${BENCH_TIMEOUT:-120} $PY scripts/bench_infer.py --model $model --repeat 2 --no-pipeline"
  $B --batch-sizes 8 64 --copies 20 --stages 2>&1 | tee "$OUT/bench.log"
  $B --batch-sizes 64 --copies 50 2>&1 | tee -a "$OUT/bench.log"
  $B --batch-sizes 1 --copies 2 2>&1 | tee -a "$OUT/bench.log"  # ~4 ms per window: fewer copies
  $B --batch-sizes 64 --copies 20 --workers 0 2>&1 | tee -a "$OUT/bench.log"
fi

if [ "$WHAT" = facts ] || [ "$WHAT" = all ]; then  # facts end to end from the GPU cross-validation's folds
  $PY scripts/eval_facts.py --cv /tmp/cv-gpu 2>&1 | tail -20 | tee "$OUT/facts-gpu.txt"
fi
