#!/usr/bin/env bash
# CI's end-to-end set against the running lab: first, alone, the fresh lab's alert check
# (tests/e2e/test_fresh_lab_alerts.py, JUnit e2e-fresh.xml: it needs the lab as make lab
# left it), then three pytest processes side by side:
#   scripts/e2e-suite.sh RESULTS_DIR
# - the data tier's files (test_database*, test_backup*, test_redis*: PostgreSQL, its
#   backups, Redis; test_failover and test_upgrade, which hold the data tier alone),
#   JUnit e2e-data.xml;
# - every other file (the app tier: the edge, deploys, the hosts, monitoring), e2e.xml;
# - the InstanceDown alert test, which is mostly waiting (the rule's `for: 2m`, then the
#   resolve), then test_new_app_host (a seventh host added and removed), e2e-alert.xml;
# then, alone, the rolling change of every tier (test_rolling_changes, e2e-last.xml),
# which leaves the lab with its changed values.
# The two tiers' tests wait for each other only where one disturbs what the other relies
# on: each test holds a shared or exclusive lock per tier (tests/e2e/conftest.py,
# lab_tiers), so a deploy runs beside a backup but never beside a failover. A process
# that collects nothing fails; a test still running after 25 min fails (--timeout).
# The lab's network traffic (all but SSH) is captured for the whole run, and
# tests/e2e/test_lab_traffic.py searches it for every generated secret afterwards.
#   scripts/e2e-suite.sh RESULTS_DIR [MARKERS]   (MARKERS: "e2e and not slow" unless given)
set -uo pipefail
results="$1"
markers="${2:-e2e and not slow}"
alert_test="tests/e2e/test_monitoring.py::test_instance_down_reaches_the_webhook"
# After the alert test in its process: a seventh host made, converged alone (beside the
# rest), joined and removed (the app tier held alone for that part only).
host_test="tests/e2e/test_new_app_host.py"
# The data tier's files that only share the tier go first: they run beside the app tier's
# deploys (which hold the app tier alone), and the tests that hold the data tier alone
# wait for those deploys anyway.
data_files=(tests/e2e/test_backup*.py tests/e2e/test_redis_backup.py tests/e2e/test_database.py
            tests/e2e/test_database_*.py tests/e2e/test_redis.py tests/e2e/test_redis_daytwo.py
            tests/e2e/test_redis_members.py tests/e2e/test_failover.py tests/e2e/test_upgrade.py)
# Last, alone: the rolling change of every tier leaves the lab with the changed values
# (tests/e2e/test_rolling_changes.py says why), so it follows every test that runs
# site.yml with the lab's inventory or reads those settings.
last_test="tests/e2e/test_rolling_changes.py"
mkdir -p "$results"

# --- The capture: every packet to, from or between the lab's hosts but SSH (the image
# archives deploys copy, and SSH is encrypted by itself), the edge's upstream to the API
# colours (TLS 1.3) included, on every interface of this machine (each host's veth and
# the bridge). Then a canary in clear to the edge's plain
# HTTP port: the search must find it, or it proves nothing.
capture="$results/lab-traffic.pcap"
traffic_test="tests/e2e/test_lab_traffic.py"
subnet="$(python3 -c 'import yaml; print(yaml.safe_load(open("inventory/lab/group_vars/all/lab.yml"))["lab_network_subnet"])')"
edge="$(python3 -c 'import yaml; h = yaml.safe_load(open("inventory/lab/hosts.yml"))["all"]
print(h["hosts"][next(iter(h["children"]["edge"]["hosts"]))]["ansible_host"])')"
rm -f "$capture"
tcpdump -i any -nn -s 0 -U -Z root -w "$capture" "net $subnet and not port 22" 2>"$results/tcpdump.log" &
tcpdump_pid=$!
for _ in $(seq 50); do grep -q "listening on" "$results/tcpdump.log" && break; sleep 0.2; done
canary="zapora-capture-canary-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
curl -s -o /dev/null --max-time 5 "http://$edge/$canary" || echo "the canary's request to http://$edge/ failed"
export ZAPORA_LAB_CAPTURE="$capture" ZAPORA_LAB_CAPTURE_CANARY="$canary"

# First, alone: a freshly converged lab fires no alert (before any test disturbs it).
fresh_test="tests/e2e/test_fresh_lab_alerts.py"
pytest --junitxml="$results/e2e-fresh.xml" --timeout=120 -m "$markers" "$fresh_test"
fresh=$?
ignore_data=()
for f in "${data_files[@]}"; do ignore_data+=(--ignore "$f"); done

pytest --junitxml="$results/e2e-alert.xml" --timeout=1500 -m "$markers" "$alert_test" "$host_test" \
    >"$results/e2e-alert.log" 2>&1 &
alert_pid=$!
pytest --junitxml="$results/e2e-data.xml" --timeout=1500 -m "$markers" --durations=15 "${data_files[@]}" \
    >"$results/e2e-data.log" 2>&1 &
data_pid=$!
pytest --junitxml="$results/e2e.xml" --timeout=1500 -m "$markers" --durations=15 \
    --deselect "$alert_test" --ignore "$host_test" --ignore "$fresh_test" --ignore "$traffic_test" \
    --ignore "$last_test" \
    "${ignore_data[@]}" tests/e2e
app=$?
wait "$data_pid"
data=$?
wait "$alert_pid"
alert=$?
pytest --junitxml="$results/e2e-last.xml" --timeout=1500 -m "$markers" "$last_test"
last=$?
# The capture ends with the last test; then its search (a few seconds).
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid"
pytest --junitxml="$results/e2e-traffic.xml" --timeout=600 -m "$markers" "$traffic_test"
traffic=$?
# The capture is about 3 GB for the whole suite: kept only when its search failed.
[[ $traffic -eq 0 ]] && rm -f "$capture"
echo "==== the data tier's process (beside the rest):"
cat "$results/e2e-data.log"
echo "==== the alert test's process (beside the rest):"
cat "$results/e2e-alert.log"
rc=0
for pair in "e2e-fresh:$fresh" "e2e:$app" "e2e-traffic:$traffic" "e2e-data:$data" "e2e-alert:$alert" \
    "e2e-last:$last"; do
    name="${pair%%:*}" code="${pair##*:}"
    if [[ $code -eq 5 ]]; then
        echo "ERROR: pytest collected no tests for $name"
        rc=1
    elif [[ $code -ne 0 ]]; then
        rc=1
    fi
done
exit $rc
