#!/usr/bin/env bash
# The container stack's proof on this machine (deploy/stack_test.py), with what it needs installed
# first: podman + runc, mmdebstrap for a local Debian base (no image registry is reachable here),
# podman-compose. Best effort: when podman cannot run here, one line says why and it exits 0.
#
#   bash deploy/stack_test.sh [--keep] [--skip-test-target]
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=localhost/debian-python:bookworm
TOOLS=${COURIER_STACK_TOOLS:-/tmp/courier-stack-tools}   # podman-compose's own virtualenv
skip() { echo "stack test skipped: $*"; exit 0; }

apt_install() {
  [ "$(id -u)" = 0 ] || return 1
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { timeout 300 apt-get update -qq >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >/dev/null 2>&1; }
}

command -v podman >/dev/null && command -v mmdebstrap >/dev/null \
  || apt_install podman runc mmdebstrap || skip "podman could not be installed (needs root and Debian's archive)"
# crun fails here ("cgroups in hybrid mode not supported") and podman's default nofile limit exceeds
# this machine's hard limit: ../shared/containers.md. Only written where no configuration exists.
if [ ! -e /etc/containers/containers.conf ] && [ "$(id -u)" = 0 ]; then
  mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' \
    > /etc/containers/containers.conf
fi
podman info >/dev/null 2>&1 || skip "podman cannot run here: $(podman info 2>&1 | tail -1)"
if [ ! -x "$TOOLS/bin/podman-compose" ]; then
  python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet 'podman-compose>=1.6,<2' \
    || skip "podman-compose could not be installed from PyPI"
fi
if ! podman image exists "$BASE"; then
  # Debian 12 with its Python 3.11, without documentation, manual pages and translations (48 MB).
  rootfs=$(mktemp -d)/rootfs.tar
  timeout 600 mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' bookworm "$rootfs" \
    || skip "mmdebstrap could not build a Debian base (Debian's archive unreachable?)"
  podman import --quiet "$rootfs" "$BASE" >/dev/null
  rm -rf "$(dirname "$rootfs")"
fi
podman run --rm --network none "$BASE" true >/dev/null 2>&1 \
  || skip "podman cannot run a container here: $(podman run --rm --network none "$BASE" true 2>&1 | tail -1)"
exec python3 deploy/stack_test.py --base "$BASE" --compose "$TOOLS/bin/podman-compose" "$@"
