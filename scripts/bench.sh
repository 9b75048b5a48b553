#!/usr/bin/env bash
# npm run bench: set-up, the lab, then the benchmark scripts. Figures go to
# bench/results/*.json and a short table is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node bin/lockstep.js lab prepare
node dist/bench/colo.js
node dist/bench/takeover.js
node dist/bench/resync.js
node dist/bench/host-loss.js
node dist/bench/outage.js
