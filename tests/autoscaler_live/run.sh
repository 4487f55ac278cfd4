#!/usr/bin/env bash
# The autoscaler (roles/app/files/zapora_autoscaler.py) against a real Docker engine: a
# Compose project zapora-blue whose api replicas are small CPU burners limited to 0.2 CPU
# (tests/autoscaler_live/burner.py, with /health/ready over TLS). Burning, the autoscaler
# scales up to its maximum (3); idle, it scales down to 1 after its stabilisation window
# (20 s here, set by LIVE_WINDOW). Prints the replica count over time and the decisions.
#
# The program runs as on an app host, in a Debian 13 helper container with Debian's
# docker-cli, docker-compose, python3-docker and nftables, on the host's network (the
# readiness check reaches 127.0.0.1:<port>) and the host's Docker socket. It reads each
# replica's use from the replica's cgroup, so the helper sees the engine's processes and
# cgroups as an app host does: the host's PID namespace (/proc/<State.Pid>/cgroup), the
# host's cgroup namespace (the paths there are the host's) and /sys/fs/cgroup read-only. On
# this shared machine its drain rules are only checked by the kernel (`nft -c`), not applied.
#
#   LIVE_BASE_IMAGE=zapora/debian13-systemd:TAG tests/autoscaler_live/run.sh
# Needs: Docker, an image with python3 on PATH (LIVE_IMAGE, default zapora/api:test),
# openssl, and apt access in the helper. About 2 minutes.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
live=${LIVE_DIR:-/tmp/zapora-autoscaler-live}
helper=${LIVE_HELPER:-zapora-autoscaler-live}
image=${LIVE_IMAGE:-zapora/api:test}
base=${LIVE_BASE_IMAGE:?a Debian 13 image for the helper, e.g. zapora/debian13-systemd:TAG}
window=${LIVE_WINDOW:-20}

in_helper() { docker exec "$helper" "$@"; }
compose() { in_helper docker compose --project-directory "$live/opt/blue" "$@"; }
replicas() {
  docker ps --filter label=com.docker.compose.project=zapora-blue --format '{{.Names}}' | grep -c api || true
}

cleanup() {
  compose down --timeout 5 >/dev/null 2>&1 || true
  docker rm -f "$helper" >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$live" && mkdir -p "$live"/{opt/blue,state,textfile,tls}
cp "$repo/tests/autoscaler_live/burner.py" "$live/burner.py"
# Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA with key usage, a leaf with its
# authority key id, as the internal CA role issues them.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=live-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$live/tls/ca.key" -out "$live/tls/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
  -keyout "$live/tls/api.key" -out "$live/tls/api.csr" 2>/dev/null
printf '%s\n' subjectAltName=IP:127.0.0.1 authorityKeyIdentifier=keyid \
  subjectKeyIdentifier=hash extendedKeyUsage=serverAuth > "$live/tls/ext"
openssl x509 -req -in "$live/tls/api.csr" -CA "$live/tls/ca.crt" -CAkey "$live/tls/ca.key" \
  -CAcreateserial -days 1 -extfile "$live/tls/ext" -out "$live/tls/api.crt" 2>/dev/null
chmod 0644 "$live/tls/api.key"  # a throwaway key, read by the image's user

cat > "$live/opt/blue/compose.yml" <<EOF
name: zapora-blue
services:
  api:
    image: $image
    entrypoint: ["python3", "/live/burner.py"]
    volumes: ["$live:/live:ro"]
    ports: ["18001:8443"]
    stop_grace_period: 5s
    deploy: {resources: {limits: {cpus: "0.2", memory: 128M}}}
EOF
# The replica slots as the app role writes them: extends api, own port (step 10 here).
{
  echo "services:"
  for slot in 2 3; do
    printf '  api-%s:\n    extends: {file: compose.yml, service: api}\n' "$slot"
    printf '    ports: !override\n      - "%s:8443"\n' $((18001 + 10 * (slot - 1)))
  done
} > "$live/opt/blue/compose.override.yml"
echo '{"active": "blue", "colours": {"blue": {}, "green": {}}}' > "$live/state/state.json"

docker rm -f "$helper" >/dev/null 2>&1 || true
docker run -d --name "$helper" --network host --cap-add NET_ADMIN \
  --pid host --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
  -v /var/run/docker.sock:/var/run/docker.sock -v "$live:$live" \
  -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  "$base" sleep 3600 >/dev/null
in_helper sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends docker-cli docker-compose python3-docker nftables' >/dev/null
docker cp "$repo/roles/app/files/zapora_autoscaler.py" "$helper:/usr/local/bin/zapora_autoscaler.py"

compose up --detach api >/dev/null
docker exec -d "$helper" sh -c "python3 /usr/local/bin/zapora_autoscaler.py --min 1 --max 3 \
  --interval 3 --scale-down-window $window --drain-seconds 2 --ready-timeout 30 \
  --port-step 10 --blue-port 18001 --state-dir $live/state --base-dir $live/opt \
  --textfile-dir $live/textfile --ca-file $live/tls/ca.crt --nft 'nft -c' \
  > $live/autoscaler.log 2>&1"

# Every decision needs each replica's sample; a helper that cannot read the replicas'
# cgroup files gets none (sample_missing), and the autoscaler rightly changes nothing.
sleep 8
if ! grep -q '"samples": 1' "$live/autoscaler.log"; then
  echo "FAIL: the autoscaler has no sample of the running replica (it reads its cgroup, found"
  echo "through /proc/<State.Pid>/cgroup under /sys/fs/cgroup); its log:"
  cut -c1-400 "$live/autoscaler.log"
  exit 1
fi
echo "first decision: $(grep -m1 '"event": "decision"' "$live/autoscaler.log" | cut -c1-300)"

start=$(date +%s)
touch "$live/burn"
echo "burning (0.2 CPU limit per replica): replicas over time"
up_at=""
while [ $(($(date +%s) - start)) -lt 120 ]; do
  n=$(replicas); echo "  t=$(($(date +%s) - start))s replicas=$n"
  if [ "$n" -ge 3 ]; then up_at=$(($(date +%s) - start)); break; fi
  sleep 3
done
[ -n "$up_at" ] || { echo "FAIL: never reached 3 replicas"; cat "$live/autoscaler.log"; exit 1; }
rm -f "$live/burn"
idle=$(date +%s)
echo "idle from t=$((idle - start))s (window ${window}s): replicas over time"
down_at=""
while [ $(($(date +%s) - idle)) -lt $((window + 90)) ]; do
  n=$(replicas); echo "  t=$(($(date +%s) - start))s replicas=$n"
  if [ "$n" -le 1 ]; then down_at=$(($(date +%s) - idle)); break; fi
  sleep 3
done
[ -n "$down_at" ] || { echo "FAIL: never back to 1 replica"; cat "$live/autoscaler.log"; exit 1; }
echo "decisions that changed something:"
grep -E '"event": "(started|draining|stopped|start_failed|error)"|"reason": "(up|down)' "$live/autoscaler.log" \
  | cut -c1-300
echo "metrics file:"; cat "$live/textfile/zapora_autoscaler.prom" | grep -v '^#'
echo "OK: up to 3 replicas ${up_at}s after the load began, back to 1 ${down_at}s after it stopped"
