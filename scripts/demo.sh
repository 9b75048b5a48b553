#!/usr/bin/env bash
# npm run demo: set-up, then `lockstep demo` (a protected pair of real VMs on this
# host, a client counting through COLO, a killed primary, the secondary carrying on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/lockstep.js demo "$@"
