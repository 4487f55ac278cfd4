#!/usr/bin/env bash
# Install a Python venv from a hashed lock, whatever pip the interpreter ships:
#   scripts/venv.sh VENV LOCK [PROJECT_DIR]
# Creates VENV when missing (with $ZAPORA_PYTHON, default python3), installs the lock's
# own pinned pip first, then the lock, then PROJECT_DIR (editable, no dependencies) if given.
# Used by scripts/setup.sh; tests/unit/test_venv_bootstrap.py runs it against an old pip.
set -euo pipefail
venv="$1"
lock="$2"
project="${3:-}"
python="${ZAPORA_PYTHON:-python3}"

die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
# Some machines' pip config names find-links folders that do not exist: pip warns on
# every call. The warning is noise here; everything else pip says stays visible.
quiet_pip() { "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v 'is ignored: it is neither' || true; }; }

[[ -r "$lock" ]] || die "no lock file at $lock"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"

# The interpreter's bundled pip may be old (23.x on Debian 12): it cannot install a
# --strip-extras hashed lock whose packages depend on extras ("all requirements must have
# their versions pinned"). Bring the lock's own pinned, hash-checked pip first.
pip_pin="$(mktemp)"
trap 'rm -f "$pip_pin"' EXIT
awk '/^pip==/{p=1} p&&/^[a-z]/&&!/^pip==/{p=0} p&&!/^ *#/' "$lock" >"$pip_pin"
[[ -s "$pip_pin" ]] || die "$lock pins no pip (run 'make lock')."
quiet_pip install -q --disable-pip-version-check --require-hashes -r "$pip_pin"
quiet_pip install -q --disable-pip-version-check --require-hashes -r "$lock"
if [[ -n "$project" ]]; then
    quiet_pip install -q --disable-pip-version-check --no-deps -e "$project"
fi
