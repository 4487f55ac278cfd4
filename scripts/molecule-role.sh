#!/usr/bin/env bash
# One role's molecule test, for `make test-roles` (which runs several side by side):
#   scripts/molecule-role.sh ROLE RESULTS_DIR
# The full output goes to RESULTS_DIR/molecule-ROLE.log; the outcome line
# "ROLE passed|failed SECONDS" is appended to RESULTS_DIR/molecule.txt, and a failure
# prints the log's last lines so CI's output shows why.
set -uo pipefail
role="$1"
results="$2"
log="$results/molecule-$role.log"
start=$(date +%s)
echo ">> molecule: $role (log: $log)"
# As the docs show it (`make test-role ROLE=name`), so that target is what CI tests.
if make --no-print-directory test-role ROLE="$role" >"$log" 2>&1; then
    outcome=passed
else
    outcome=failed
fi
line="$role $outcome $(( $(date +%s) - start ))"
echo "$line" >>"$results/molecule.txt"
echo ">> molecule: $line"
if [[ $outcome == failed ]]; then
    echo ">> last lines of $log:"
    tail -n 60 "$log"
    exit 1
fi
