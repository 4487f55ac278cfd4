#!/usr/bin/env bash
# Controller setup, idempotent: installs what is missing and starts the Docker engine.
# Run by `make setup` (and by every make target that needs it). A second run takes seconds.
#   scripts/setup.sh          an admin's controller: Docker engine, debootstrap, .venv
#   scripts/setup.sh --test   also the test machine's servers (PostgreSQL, Redis, wrk)
#
# Environment:
#   ZAPORA_DOCKER_LOG   where a dockerd started here logs (default /var/log/zapora-dockerd.log)
#   ZAPORA_PYTHON       interpreter for .venv (default python3; needs 3.11+)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${ZAPORA_PYTHON:-python3}"
docker_log="${ZAPORA_DOCKER_LOG:-/var/log/zapora-dockerd.log}"

say() { printf '>> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$1" >&2; shift; for l in "$@"; do printf '       %s\n' "$l" >&2; done; exit 1; }

# --- controller OS -----------------------------------------------------------------
if [[ ! -r /etc/os-release ]]; then
    die "cannot tell the controller's OS (/etc/os-release is missing)." \
        "Zapora's controller setup supports Debian 12+ and Ubuntu 22.04+."
fi
# shellcheck disable=SC1091
. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*|*" ubuntu "*) ;;
    *) die "unsupported controller OS '${PRETTY_NAME:-$ID}'." \
           "Run the controller on Debian 12+ or Ubuntu 22.04+ (a VM or container is fine)." ;;
esac

# --- root (only when something must be installed or started) ------------------------
SUDO=""
need_root() {
    [[ $EUID -eq 0 ]] && return 0
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
        return 0
    fi
    die "setup needs root to $1." \
        "Run 'sudo make setup' once (or give this user passwordless sudo), then run make" \
        "again as this user; it also needs access to /var/run/docker.sock (group docker)."
}

# --- Debian packages ----------------------------------------------------------------
# Controller (always): docker.io et al. for the lab and molecule; debootstrap for the base
# image; nftables and openssh-client for firewall syntax checks and SSH to the lab hosts;
# tcpdump for the capture of the lab's traffic during the end-to-end suite.
apt_packages=(docker.io containerd runc iptables debootstrap openssh-client rsync
              nftables make git curl python3-venv tcpdump)
# Test machine only (--test): the real PostgreSQL and Redis binaries the API tests start
# on loopback themselves, wrk for bench/, and promtool/amtool (prometheus,
# prometheus-alertmanager) for the alert rules' unit tests. Installed with services held back
# (policy-rc.d), so nothing that already runs on this machine is stopped or restarted.
test_packages=(postgresql redis-server wrk prometheus prometheus-alertmanager)
[[ "${1:-}" == "--test" ]] && apt_packages+=("${test_packages[@]}")
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    need_root "install Debian packages (${missing[*]})"
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    # A package installed here must not start its service: the tests start their own
    # servers, and an admin's controller is not a database host. policy-rc.d 101 tells
    # invoke-rc.d (and deb-systemd-invoke) to leave services alone during this install only.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null
        $SUDO chmod 0755 $policy
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    [[ -n "$(trap -p EXIT)" ]] && { $SUDO rm -f $policy; trap - EXIT; }
fi

# --- Docker engine ------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    if [[ $EUID -ne 0 && -S /var/run/docker.sock ]] && pgrep -x dockerd >/dev/null; then
        die "the Docker engine runs, but this user may not use /var/run/docker.sock." \
            "Add the user to group docker ('sudo usermod -aG docker $(id -un)', then log in" \
            "again) or run make as root."
    fi
    need_root "start the Docker engine"
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        say "starting docker.service"
        $SUDO systemctl start docker || true
    else
        # No systemd (CI machines, containers): start the daemon in the background, in a
        # session of its own (setsid), so that the end of the shell, job or session that
        # ran `make` does not take the engine, and every container, down with it.
        say "starting dockerd in the background (log: $docker_log)"
        $SUDO setsid -f sh -c "exec dockerd >>'$docker_log' 2>&1 </dev/null"
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || die "the Docker engine did not start within 60 s." \
        "See $docker_log (or 'journalctl -u docker'); fix the cause, then run make again."
fi

# --- Python venv --------------------------------------------------------------------
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$python is older than 3.11; ansible-core 2.19 needs 3.11+." \
           "Set ZAPORA_PYTHON to a newer interpreter."
lock="$repo/requirements/dev.txt"
stamp="$venv/.zapora-lock.sha256"
want="$(cat "$lock" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    say "installing the controller venv from requirements/dev.txt"
    ZAPORA_PYTHON="$python" "$repo/scripts/venv.sh" "$venv" "$lock" "$repo"
    echo "$want" >"$stamp"
fi
say "setup done: $(docker version --format 'docker {{.Server.Version}}'), $("$venv/bin/ansible" --version | sed -n 1p)"
