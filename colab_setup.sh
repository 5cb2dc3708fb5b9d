#!/usr/bin/env bash
# Colab bootstrap: install iterdpo's requirements without replacing Colab's own CUDA torch.
set -euo pipefail
cd "$(dirname "$0")"
grep -v '^torch' requirements.txt > /tmp/iterdpo-requirements.txt
pip install -q -r /tmp/iterdpo-requirements.txt
pip install -q -e . 2>/dev/null || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
