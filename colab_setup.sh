#!/usr/bin/env bash
# Colab bootstrap: the libraries iterdpo imports at run time, and nothing of the runtime Colab is running.
# - requirements-colab.txt alone: the pins are written there once, and requirements.txt includes it.
# - Never torch: Colab's CUDA build stays. Pinning it to the installed version makes pip stop with an error,
#   rather than swap in another build, should a requirement ever need a different torch.
# - Never the kernel stack (ipykernel, ipywidgets, ipython, tornado, pyzmq, jupyter_client, jupyter_core,
#   traitlets, notebook, nbformat): the notebook runs in Colab's own kernel, whose versions Colab pins, and
#   replacing them under a live kernel breaks its widgets and output until a restart.
# - No papermill: it executes notebooks headless for `python -m iterdpo run`; a Colab user runs them by hand,
#   and papermill would pull nbformat and jupyter_client in (`python -m iterdpo run --engine python` runs
#   without it). Test tools live in requirements-dev.txt.
# - No -q: pip's warnings about packages it changed are the first thing to read when something breaks later.
#   A failed install stops the script, with pip's error, and the notebook cell that ran it.
set -euo pipefail
cd "$(dirname "$0")"
if ! torch_version=$(python -c "import torch; print(torch.__version__)"); then
    echo "colab_setup.sh: no torch in this Python; Colab ships it, elsewhere install torch first (see README.md)" >&2
    exit 1
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" > "$constraints"
python -m pip install --progress-bar off -r requirements-colab.txt -c "$constraints"
python -m pip install --progress-bar off --no-deps -e .
python -c "import torch, iterdpo, iterdpo.pipeline; print('iterdpo', iterdpo.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
