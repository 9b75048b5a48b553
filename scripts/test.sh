#!/usr/bin/env bash
# npm test: set-up, the lab (QEMU + demo guest, built once per machine and
# cached outside the repository), then unit tests and integration tests on real VMs.
#   npm test -- --unit    unit tests only (seconds, no VMs)
#   npm test -- --slow    also tests marked slow (LOCKSTEP_SLOW_TESTS=1)
set -euo pipefail
cd "$(dirname "$0")/.."

unit_only=0
for a in "$@"; do
  case "$a" in
    --unit) unit_only=1 ;;
    --slow) export LOCKSTEP_SLOW_TESTS=1 ;;
    *) echo "unknown option $a (known: --unit, --slow)" >&2; exit 2 ;;
  esac
done

bash scripts/setup.sh

if [ $unit_only -eq 1 ]; then
  exec node --test --test-concurrency=1 dist/test/unit/
fi

# Build or reuse the lab before the tests, with progress, outside any test timeout:
# QEMU 7.2 (Debian 12's, the default line) and 10.0 (Debian 13's), each with lockstep's patches.
# Cached, each takes a second. With an empty cache, 10.0 (needed only by the matrix at the end)
# builds in the background at the lowest CPU priority, on what the 7.2 build and the 7.2 tests
# leave of the CPU; the 7.2 line is built first, in front.
log10=$(mktemp -t lockstep-prepare-10.0.XXXXXX.log)
nice -n 19 node bin/lockstep.js lab prepare --test-builds --qemu 10.0 >"$log10" 2>&1 &
prepare10=$!
trap 'kill $prepare10 2>/dev/null || true' EXIT
node bin/lockstep.js lab prepare --test-builds

# One test file at a time: integration tests run VMs on a 2-core machine.
# --test-force-exit: a test file's process ends once its tests and hooks are done, even if something it started
# still holds its event loop (a lab client left running by a failed test once kept a CI run waiting until CI's
# limit); what a test starts it still ends itself.
# Everything on the default line (7.2) ...
status=0
node --test --test-concurrency=1 --test-force-exit dist/test/unit/ dist/test/integration/ || status=$?

echo "# QEMU 10.0: waiting for its lab build (started in the background; log: $log10)"
if ! wait $prepare10; then
  cat "$log10" >&2
  echo "lockstep: preparing QEMU 10.0 failed (log above)" >&2
  exit 1
fi
trap - EXIT
tail -n 3 "$log10"
rm -f "$log10"

# ... and on QEMU 10.0: up/status/down, a failover by hand, both failovers by the agents,
# 4 failover → re-protection cycles with each node dying in turn (both resumes), the
# client's TCP connection and disk counter checked throughout, and the tests that show
# 10.0 needs patches 0001, 0003 and 0005, and its .deb installed on a fresh Debian 12.
echo "# QEMU 10.0: the version matrix"
LOCKSTEP_LAB_QEMU=10.0 LOCKSTEP_RESYNC_CYCLES=4 node --test --test-concurrency=1 --test-force-exit \
  --test-name-pattern='^(up → |the service answers|a second up|down stops|kill -9 the primary, failover|failover to a node|after the failover|kill -9 the primary QEMU|kill -9 the secondary QEMU|[0-9]+ failover → automatic re-protection cycles|stock QEMU|a flag the secondary|the secondary.s replica fails a write|the \\.deb of QEMU|a second run refuses|on a fresh Debian 12)' \
  dist/test/integration/up-status-down.test.js dist/test/integration/failover-cli.test.js \
  dist/test/integration/agent-failover.test.js dist/test/integration/resync.test.js \
  dist/test/integration/p1-checkpoint-deadlock.test.js dist/test/integration/p3-virtio-flags.test.js \
  dist/test/integration/p5-replica-write-errors.test.js \
  dist/test/integration/qemu-package.test.js || status=$?
exit $status
