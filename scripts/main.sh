#!/usr/bin/env bash
# The main job: set up; validate the annotations; train on the seed annotations with the embedded default
# model (configs/synthetic.yaml: the seeds with seed 004 held out, plus the synthetic training documents);
# evaluate the saved model on the held-out seed; extract facts from it as a sample report the model never
# trained on. Everything lands in runs/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/main}
SAMPLE=seeds/004_62a5c04a52bade59.txt
.venv/bin/nlp annotations validate
.venv/bin/nlp train --out "$OUT" --force    # no config: the default one (nlp/cli.py DEFAULT_CONFIG)
.venv/bin/nlp evaluate --model "$OUT" --docs "$(basename "$SAMPLE")" --out "$OUT/evaluation"
.venv/bin/nlp extract "$SAMPLE" --model "$OUT" --format json --out "$OUT/extract/"
.venv/bin/nlp extract "$SAMPLE" --model "$OUT" --format html --out "$OUT/extract/"
.venv/bin/python scripts/eval_facts.py --model "$OUT" --docs "$(basename "$SAMPLE")" || true
echo "model: $OUT; evaluation: $OUT/evaluation/eval.md; facts: $OUT/extract/"
