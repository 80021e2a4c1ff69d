#!/usr/bin/env bash
# Set up, then run the whole test suite offline (no model hub). pytest's exit code 5 (no test collected)
# is a failure here: a suite that ran nothing proves nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# Headless Chromium renders the HTML view and prints PDFs in the tests (Debian's package; root installs it).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-cjk) >/dev/null \
      || { echo "could not install chromium" >&2; exit 1; }
  else
    echo "install Debian's chromium and fonts-noto-cjk (sudo apt-get install chromium fonts-noto-cjk)" >&2; exit 1
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit $rc
