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

# Build or reuse the lab before the tests, with progress, outside any test timeout.
node bin/lockstep.js lab prepare --test-builds

# One test file at a time: integration tests run VMs on a 2-core machine.
exec node --test --test-concurrency=1 dist/test/unit/ dist/test/integration/
