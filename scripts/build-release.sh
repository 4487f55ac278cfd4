#!/usr/bin/env bash
# Build the API image on the controller and save it as an archive for hosts without a
# registry (the lab, offline sites). Prints one line of JSON: the release id, the image
# tag and the archive's path.
#
#   scripts/build-release.sh [OUTPUT_DIR]      (default: .cache/releases)
#
# The release id is the git revision plus the image ID (the digest of the image's
# configuration, which changes with any byte of the image): g<rev>[-dirty]-<id 12>, where
# <rev> is the last commit that touched the image's sources, so a commit elsewhere in
# the repository (docs, roles) is not a new release.
# A build that produces the same image reuses the archive already there.
#
# Environment:
#   ZAPORA_APP_BASE_IMAGE  base image (default: the lab's Debian 13 image, images/base)
#   ZAPORA_EXTRA_CA_FILE   PEM file of extra CAs trusted inside the image (default: none;
#                          the lab's base image already trusts the controller's bundle)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:-$repo_root/.cache/releases}"
base="${ZAPORA_APP_BASE_IMAGE:-$("$repo_root/images/base/build.sh" --ref)}"
cd "$repo_root"

if ! docker image inspect "$base" >/dev/null 2>&1; then
    echo "ERROR: base image $base is missing: run \`make image\`." >&2
    exit 1
fi
extra_ca=""
if [[ -n "${ZAPORA_EXTRA_CA_FILE:-}" ]]; then
    extra_ca="$(cat "$ZAPORA_EXTRA_CA_FILE")"
fi

sources=(app/zapora app/Dockerfile requirements/app.txt)
revision="g$(git log -1 --format=%h --abbrev=12 -- "${sources[@]}")"
# Only the files the image is built from count towards "dirty".
if ! git diff --quiet HEAD -- "${sources[@]}"; then
    revision="$revision-dirty"
fi

# The context holds only what the image needs (see app/Dockerfile).
image_id="$(tar -c --exclude=__pycache__ requirements/app.txt app/zapora app/Dockerfile \
    | docker build -q -f app/Dockerfile --build-arg "BASE_IMAGE=$base" \
        --build-arg "EXTRA_CA_CERTS=$extra_ca" \
        --label "org.zapora.revision=$revision" -)"
short="${image_id#sha256:}"
release="$revision-${short:0:12}"
tag="zapora/api:$release"
docker tag "$image_id" "$tag"

mkdir -p "$out_dir"
archive="$out_dir/zapora-api-$release.tar"
if [[ ! -s "$archive" ]]; then
    # A name of its own per build: CI builds from two places at once (the lab, molecule).
    docker save -o "$archive.part.$$" "$tag"
    mv "$archive.part.$$" "$archive"
fi
printf '{"release": "%s", "image": "%s", "image_id": "%s", "archive": "%s"}\n' \
    "$release" "$tag" "$image_id" "$archive"
