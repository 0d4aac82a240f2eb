# Source this file (". scripts/venv.sh") from the repository root: it activates ./.venv
# when scripts/install.sh installed there (an externally managed python3, PEP 668) and no
# virtual environment is active; otherwise it changes nothing.  POSIX sh; never exits.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
fi
