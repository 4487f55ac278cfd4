#!/usr/bin/env bash
# `make lab`'s converge step: site.yml against the lab, skipped when nothing it reads has
# changed since its last successful run on these very containers, as `make image` skips
# an unchanged base image and deploy.yml an unchanged release.
#   scripts/lab-converge.sh INVENTORY
#
# What counts as a change: any byte of roles/, playbooks/, the inventory, ansible.cfg or
# the controller's lock (committed, staged, unstaged or untracked), or a lab host that is
# a new container (lab-up recreated it). Hosts changed by hand are not seen: run
# `make lab LAB_CONVERGE=1` to converge them again regardless.
#
# LAB_SITE_ARGS adds options to that site.yml run (`make lab LAB_SITE_ARGS="--diff -v"`, as
# `make test` runs it). Its output is kept in .lab/site.log, first line the command that made
# it: tests/e2e/test_secret_exposure.py searches a `--diff -v` run's log for every secret.
set -euo pipefail
inventory="$1"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stamp="$repo/.lab/site-converged"
cd "$repo"

inputs() {
    local paths=(roles playbooks "$inventory" ansible.cfg requirements/dev.txt)
    git ls-files -s -- "${paths[@]}"
    git diff HEAD -- "${paths[@]}"
    git ls-files -z --others --exclude-standard -- "${paths[@]}" | xargs -0r sha256sum
    docker ps -q --no-trunc --filter label=org.zapora.lab | sort
}
key="$(inputs | sha256sum | cut -d' ' -f1)"

if [[ "${LAB_CONVERGE:-}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    echo ">> site.yml: not run: these lab hosts were converged from the same roles, playbooks" \
         "and inventory ($(date -r "$stamp" '+%F %T')); LAB_CONVERGE=1 runs it again"
    exit 0
fi
rm -f "$stamp"
log="$repo/.lab/site.log"
mkdir -p "$(dirname "$log")"
echo "# ansible-playbook -i $inventory playbooks/site.yml ${LAB_SITE_ARGS:-} ($(date -u '+%F %T') UTC)" >"$log"
# shellcheck disable=SC2086 # LAB_SITE_ARGS is a list of options
ansible-playbook -i "$inventory" playbooks/site.yml ${LAB_SITE_ARGS:-} | tee -a "$log"
mkdir -p "$(dirname "$stamp")"
echo "$key" >"$stamp"
