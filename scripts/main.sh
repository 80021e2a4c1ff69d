#!/usr/bin/env bash
# The main job: set up and validate the annotations.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nlp annotations validate
