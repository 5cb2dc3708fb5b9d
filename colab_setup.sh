#!/usr/bin/env bash
# Colab bootstrap: iterdpo's runtime requirements without replacing Colab's own CUDA torch.
# Test tools live in requirements-dev.txt and are not installed here; papermill drives
# `python -m iterdpo run` and is left out too (a notebook on Colab runs in its own kernel).
# Any failed install stops the script, with pip's error, and the notebook cell that ran it.
set -euo pipefail
cd "$(dirname "$0")"
grep -v -E '^(torch|papermill)\b' requirements.txt > /tmp/iterdpo-requirements.txt
pip install -q -r /tmp/iterdpo-requirements.txt
pip install -q --no-deps -e .
python -c "import iterdpo, torch; print('iterdpo', iterdpo.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
