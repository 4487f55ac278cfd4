#!/usr/bin/env bash
# Build the Debian 13 (trixie) systemd base image used by the lab hosts, molecule
# scenarios and as the base of the app image. No registry is reachable on these
# machines, so the image is made with debootstrap and `docker import`.
#
# The tag is a hash of this recipe (this file, packages.txt and the extra CA bundle),
# so the image is rebuilt only when its recipe changes. (docker 20.10 cannot set
# STOPSIGNAL on import: the lab and molecule pass SIGRTMIN+3 when they start a host.)
#
#   images/base/build.sh            build if missing, print the image reference
#   images/base/build.sh --ref      only print the reference it would build
#
# Environment:
#   ZAPORA_EXTRA_CA_BUNDLE  PEM bundle trusted inside the image in addition to Debian's
#                           CAs (for TLS-intercepting proxies). Default: the controller's
#                           system bundle /etc/ssl/certs/ca-certificates.crt; "none" to skip.
#   ZAPORA_IMAGE_REPO       image repository name (default zapora/debian13-systemd)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="${ZAPORA_IMAGE_REPO:-zapora/debian13-systemd}"
ca_bundle="${ZAPORA_EXTRA_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
suite=trixie

if [[ "$ca_bundle" != none && ! -r "$ca_bundle" ]]; then
    echo "ERROR: ZAPORA_EXTRA_CA_BUNDLE=$ca_bundle is not a readable file." >&2
    echo "       Point it at a PEM bundle, or set it to 'none'." >&2
    exit 1
fi

recipe_hash() {
    {
        cat "$here/build.sh" "$here/packages.txt"
        [[ "$ca_bundle" == none ]] || cat "$ca_bundle"
    } | sha256sum | cut -c1-12
}
ref="$repo:$(recipe_hash)"

if [[ "${1:-}" == --ref ]]; then
    echo "$ref"
    exit 0
fi

if docker image inspect "$ref" >/dev/null 2>&1; then
    echo "$ref"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "ERROR: debootstrap is missing; run 'make setup'." >&2; exit 1; }

root="$(mktemp -d /var/tmp/zapora-rootfs.XXXXXX)"
cleanup() { rm -rf --one-file-system "$root"; }
trap cleanup EXIT

packages="$(grep -v '^\s*#' "$here/packages.txt" | xargs | tr ' ' ',')"
echo ">> debootstrap $suite into $root (packages: $packages)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$root" >&2

# Throw-away hosts (the lab, molecule, the API image's build): dpkg skips its fsync per
# file, as Docker's own Debian images once did. Measured: 20 % off a package install here
# (45 s -> 36 s for postgresql-17, nginx and prometheus). A crash loses the container anyway.
echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/zapora-unsafe-io"

# Units that make no sense inside a container, or that hang its boot.
for unit in getty@tty1.service serial-getty@.service console-getty.service \
            systemd-udevd.service systemd-udev-trigger.service systemd-firstboot.service \
            systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount \
            systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# The lab copies its SSH key here; sshd insists on these modes.
install -d -m 0700 "$root/root/.ssh"

# Each container gets its own identity at first boot.
: >"$root/etc/machine-id"
rm -f "$root/etc/hostname" "$root/etc/ssh/ssh_host_"*
# sshd host keys are generated at first boot (ssh.service's ExecStartPre needs them).
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/zapora-hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
chroot "$root" systemctl enable ssh.service >/dev/null 2>&1 || true

if [[ "$ca_bundle" != none ]]; then
    # update-ca-certificates appends every certificate of this file to the system bundle.
    install -m 0644 "$ca_bundle" "$root/usr/local/share/ca-certificates/zapora-extra-ca.crt"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
fi

chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
# An empty list directory with a fresh mtime makes apt's cache_valid_time believe the
# index is fresh; date it to the epoch so the first apt task refreshes it.
touch -d @0 "$root"/var/lib/apt/lists

echo ">> importing as $ref" >&2
tar -C "$root" --numeric-owner -c . | docker import \
    --change 'CMD ["/sbin/init"]' \
    --change 'ENV container=docker' \
    --change "LABEL org.zapora.recipe=$ref" \
    - "$ref" >/dev/null
docker tag "$ref" "$repo:current"
echo "$ref"
