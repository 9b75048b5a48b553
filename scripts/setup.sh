#!/usr/bin/env bash
# Installs what lockstep needs on a Debian 12 machine, and only what is missing:
# Debian packages (QEMU, its image tools and firmware, the lab QEMU's build
# dependencies), then the npm dependencies, then compiles the TypeScript.
# Safe to run again: it does nothing when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  # QEMU: the distribution's (KVM hosts, and firmware for the lab build), image tools
  qemu-system-x86 qemu-utils
  # the demo guest's initramfs
  cpio gzip xz-utils
  # a fresh Debian 12 root for the package test (lockstep qemu package)
  debootstrap
  # network namespaces and taps for the multi-host lab
  iproute2
  # the lab QEMU's build (only used where KVM does not work)
  dpkg-dev meson ninja-build pkg-config flex bison libglib2.0-dev libpixman-1-dev
  libslirp-dev libfdt-dev libzstd-dev zlib1g-dev python3-venv bzip2 patch gcc
  # ... with GnuTLS: the data plane's TLS (tls-creds-psk)
  libgnutls28-dev
  # ... and ccache: a partial patch set recompiles only what differs from the full one
  ccache
  # the tests of the metrics and alerting rules: promtool check metrics / check rules / test rules
  # (promtool comes only with Debian's prometheus package; lockstep needs no Prometheus server:
  # where systemd runs, stop the one the package starts with systemctl disable --now prometheus)
  prometheus
  # the dashboard's tests: a headless browser (Debian's; the tests never download one)
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# The demo guest is assembled from Debian packages fetched with apt-get download,
# which needs package lists.
need_update=0
if [ ${#missing[@]} -gt 0 ] || ! apt-cache show --no-all-versions linux-image-cloud-amd64 >/dev/null 2>&1; then
  need_update=1
fi

if [ $need_update -eq 1 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "lockstep set-up: these Debian packages are missing: ${missing[*]:-(none, but the package lists are empty)}" >&2
    echo "  run as root, or install them yourself: apt-get update && apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "• apt-get update"
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    echo "• installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# npm dependencies, exactly as locked, when missing or out of date.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "• npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "• compiling TypeScript"
# A clean build: output of removed sources (old tests) must not linger in dist/.
rm -rf dist
npx --no-install tsc -p tsconfig.json
