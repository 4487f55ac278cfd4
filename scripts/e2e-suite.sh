#!/usr/bin/env bash
# CI's end-to-end set against the running lab, in two pytest processes side by side:
#   scripts/e2e-suite.sh RESULTS_DIR
# The InstanceDown alert test is mostly waiting (the rule's `for: 2m`, then the resolve),
# so it runs in a process of its own beside the rest instead of adding ~3 min to the
# chain. The only test it could disturb, "every target is up", waits for its outage
# through a lock (tests/e2e/conftest.py, node_exporter_outage). Each process writes its
# own JUnit file (e2e.xml, e2e-alert.xml); a process that collects nothing fails.
set -uo pipefail
results="$1"
alert_test="tests/e2e/test_monitoring.py::test_instance_down_reaches_the_webhook"
mkdir -p "$results"

pytest --junitxml="$results/e2e-alert.xml" -m "e2e and not slow" "$alert_test" \
    >"$results/e2e-alert.log" 2>&1 &
alert_pid=$!
pytest --junitxml="$results/e2e.xml" -m "e2e and not slow" --deselect "$alert_test" tests/e2e
rest=$?
wait "$alert_pid"
alert=$?
echo "==== the alert test's process (beside the rest):"
cat "$results/e2e-alert.log"
rc=0
for pair in "e2e:$rest" "e2e-alert:$alert"; do
    name="${pair%%:*}" code="${pair##*:}"
    if [[ $code -eq 5 ]]; then
        echo "ERROR: pytest collected no tests for $name"
        rc=1
    elif [[ $code -ne 0 ]]; then
        rc=1
    fi
done
exit $rc
