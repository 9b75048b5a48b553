/**
 * The simulator as part of `npm test`: a fixed set of fault schedules
 * (2,000 seeds), each checked for safety, liveness and status truthfulness
 * (src/sim/model.ts). A violation prints its seed and how to replay it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import { runSeeds, runSeed, summarize } from '../../src/sim/run.js';

const SEEDS = Number(process.env.LOCKSTEP_SIM_SEEDS ?? 2000);

test(`${SEEDS} simulated fault schedules: never two writers, no acknowledged write lost, the VM runs and is protected again, status tells the truth`, { timeout: 10 * 60_000 }, async () => {
  const t0 = performance.now();
  const outcomes = await runSeeds(1, SEEDS, Math.max(1, Math.min(2, os.availableParallelism())));
  const lines = summarize(outcomes, performance.now() - t0);
  process.stderr.write(lines.map((l) => `# ${l}`).join('\n') + '\n');
  assert.equal(outcomes.length, SEEDS);
  assert.deepEqual(outcomes.filter((o) => o.violation).map((o) => `seed ${o.seed}: ${o.violation}`), []);
});

test('a schedule replays exactly from its seed', () => {
  const a = runSeed(1243, true);
  const b = runSeed(1243, true);
  assert.deepEqual(a.trace, b.trace);
  assert.ok(a.trace.length > 50);
});
