#!/usr/bin/env bash
# One-step set-up on a bare Debian/Ubuntu machine: system libraries for Qt/OpenGL under Xvfb,
# a virtual environment in .venv, and the package with its development extras.
# torch is capped below 2.14 in pyproject.toml so pip takes the CPU wheel, not a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libegl1 libglib2.0-0 libdbus-1-3 libfontconfig1 libxkbcommon0 \
    libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
    libxcb-render-util0 libxcb-shape0 >/dev/null
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import torch, napari_spatial_impute as n; print('napari-spatial-impute', n.__version__, 'torch', torch.__version__)"
