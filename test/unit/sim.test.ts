/**
 * The simulator as part of `npm test`: the procedures it models are the
 * runtime's own step lists; a fixed set of fault schedules (2,000 seeds),
 * each checked for safety, liveness and status truthfulness (src/sim/
 * invariants.ts); the stored regressions replay; and every kept mutant is
 * caught by the invariant of its rule (a bounded check). A violation prints
 * its seed and how to replay it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { runSeeds, runSeed, runSchedule, summarize, storedRegressions, replayStored } from '../../src/sim/run.js';
import { MUTANTS } from '../../src/node/mutants.js';
import type { Schedule } from '../../src/sim/schedule-types.js';
import { scheduleFor, unheardReplicaErrors, mayLoseQemu } from '../../src/sim/schedule.js';
import { packageRoot } from '../../src/util/paths.js';
import { simSetup, unaskedHost } from '../../src/sim/setup.js';
import { stepModel } from '../../src/sim/procedures.js';
import { procedurePlan } from '../../src/node/procedures.js';
import type { Procedure } from '../../src/node/core/types.js';

const SEEDS = Number(process.env.LOCKSTEP_SIM_SEEDS ?? 2000);

/** Every procedure the core can ask for, in every variant of its options. */
export const EVERY_PROCEDURE: Procedure[] = [
  { kind: 'primary-failover', yank: true },
  { kind: 'primary-failover', yank: false },
  ...[true, false].flatMap((yank) => [true, false].map((resume): Procedure => ({ kind: 'takeover', yank, resume }))),
  { kind: 'fence', yank: null },
  { kind: 'fence', yank: 'to-primary' },
  { kind: 'fence', yank: 'to-secondary' },
  { kind: 'unfence' },
  { kind: 'yank', links: 'to-primary' },
  { kind: 'yank', links: 'to-secondary' },
  { kind: 'restart' },
  { kind: 'resume', targetPid: 0 },
  { kind: 'abort-resume', cont: true },
  { kind: 'abort-resume', cont: false },
  { kind: 'prepare-secondary', primary: 'b', sizeBytes: 1 << 20 },
  { kind: 'drop-secondary' },
  { kind: 'adopt-secondary' },
];

test('the simulator models every step of every procedure the runtime runs, by name, with the same checks of what QEMU already did', () => {
  const seen = new Set<string>();
  // A node whose QEMU can pause before its switchover into COLO resumes in the live order (other steps).
  for (const [witness, pause] of [true, false].flatMap((w) => [true, false].map((p) => [w, p] as const))) {
    const setup = simSetup({ witness, paths: 2, pauseIntoColo: { a: pause, b: pause } });
    for (const p of EVERY_PROCEDURE) {
      const steps = procedurePlan(p, unaskedHost(setup, 'a')).steps;
      assert.ok(steps.length > 0, p.kind);
      for (const [i, st] of steps.entries()) {
        const m = stepModel(p, st.name);
        seen.add(`${p.kind}: ${st.name}`);
        // The take-back's best-effort steps check inside their run; the model checks alike.
        if (!(p.kind === 'abort-resume' && i > 0)) assert.equal(m.done !== undefined, st.done !== undefined, `${p.kind}: "${st.name}": the runtime ${st.done ? 'checks' : 'does not check'} whether it is done already`);
        assert.ok(st.timeoutMs > 0);
      }
    }
  }
  // tap and cont are steps of the takeover, the announcement too.
  const takeover = procedurePlan({ kind: 'takeover', yank: true, resume: true }, unaskedHost(simSetup({ witness: true, paths: 1 }), 'b')).steps.map((s) => s.name);
  assert.match(takeover[0]!, /^tap tap-b on bridge br0, tap-a off$/);
  assert.deepEqual(takeover.slice(-2), ['announce-self', 'cont']);
  assert.ok(seen.size > 60, `${seen.size} steps`);
});

test('a step the simulator does not know fails loudly', () => {
  assert.throws(() => stepModel({ kind: 'unfence' }, 'device_add something-new'), /no model of step "device_add something-new"/);
});

test(`${SEEDS} simulated fault schedules: never two writers, no acknowledged write lost, the VM runs and is protected again, status tells the truth`, { timeout: 20 * 60_000 }, async () => {
  const t0 = performance.now();
  const outcomes = await runSeeds(1, SEEDS, Math.max(1, Math.min(2, os.availableParallelism())));
  const lines = summarize(outcomes, performance.now() - t0);
  process.stderr.write(lines.map((l) => `# ${l}`).join('\n') + '\n');
  assert.equal(outcomes.length, SEEDS);
  assert.deepEqual(outcomes.filter((o) => o.violations.length).map((o) => `seed ${o.seed}: ${o.violations.map((v) => `${v.kind}: ${v.detail}`).join('; ')}`), []);
});

/** The stored regressions (src/sim/run.ts, StoredRegression): each passes, and fails again with its bug put back. */
test('every stored regression replays: it passes, and fails again, by the invariant of its rule, with its bug put back', () => {
  const all = storedRegressions();
  assert.ok(all.length > 0);
  for (const { file, r } of all) {
    assert.ok(r.mutants.length > 0 && r.mutants.every((m) => m in MUTANTS), `${file}: names the mutant that puts its bug back`);
    const x = replayStored(r);
    assert.deepEqual(x.clean.map((v) => `${v.kind}: ${v.detail}`), [], `${file}: passes`);
    assert.ok(x.caught, `${file}: with ${r.mutants.join(', ')} planted it fails by ${r.caughtBy.join(' or ')} (got ${x.planted.map((v) => v.kind).join(', ') || 'nothing'})`);
    assert.ok(!x.controlMeets, `${file}: with only ${r.control?.join(', ')} planted, the rule itself keeps ${r.caughtBy.join(' and ')} away`);
  }
});

test('a schedule replays exactly from its seed', () => {
  const a = runSeed(1243, true);
  const b = runSeed(1243, true);
  assert.deepEqual(a.trace, b.trace);
  assert.ok(a.trace.length > 50);
});

/**
 * The one known limit the generator leaves out (schedule.ts,
 * dropUnheardReplicaErrors): a replica's failed write nobody heard of, where
 * the secondary may then lose the copy in its active buffer with its QEMU.
 * Everything else of a replica failing while the other agent is away stays in:
 * with P5 the primary's checkpoint fails whoever listens.
 */
test('the generator leaves out only the known limit of an unheard replica error', () => {
  let kept = 0;
  for (let seed = 1; seed <= 20_000; seed++) {
    const s = scheduleFor(seed);
    for (const f of s.faults) {
      if (f.kind !== 'disk-errors' || !unheardReplicaErrors(s.faults, f)) continue;
      assert.equal(s.replicaErrors, 'p5', `seed ${seed}: an unheard replica error without P5`);
      assert.ok(!mayLoseQemu(s.faults, f.node), `seed ${seed}: an unheard replica error where ${f.node} may lose its QEMU`);
      kept++;
    }
  }
  assert.ok(kept > 0, 'no schedule of the first 20,000 keeps an unheard replica error that P5 handles');
});

/**
 * Schedules of the soaks that the model itself got wrong, each kept as data
 * with what was wrong (test/sim-model-regressions/): they must replay clean,
 * and the model's fix must not drift away.
 */
test('schedules of the soak that the model once judged wrongly replay clean', () => {
  const dir = path.join(packageRoot(), 'test', 'sim-model-regressions');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
  assert.ok(files.length > 0);
  for (const f of files) {
    const r = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as { name: string; schedule: Schedule };
    const { violations } = runSchedule(r.schedule).outcome;
    assert.deepEqual(violations.map((v) => `${v.kind}: ${v.detail}`), [], `${f} (${r.name})`);
  }
});

/**
 * A replica that fails writes, with the primary's host lost after them:
 * lockstep's QEMU (P5) reports each (QUORUM_REPORT_BAD) and fails the next
 * checkpoint, which ends COLO; without the checkpoint half the agents' rules
 * alone keep the short replica out. Both keep every acknowledged write.
 */
test('a write the replica failed: QUORUM_REPORT_BAD, and with P5 the next checkpoint ends COLO; no acknowledged write is lost either way', () => {
  const base: Schedule = {
    version: 2,
    seed: 7,
    witness: true,
    paths: 1,
    clocks: { a: 1, b: 1, w: 1 },
    stepFailP: 0,
    slowCheckpoints: false,
    faults: [
      { at: 4000, kind: 'disk-errors', node: 'b', ms: 1500, p: 1 },
      { at: 9000, kind: 'power-loss', node: 'a', ms: 5000 },
    ],
    operatorResyncs: [],
    quietAt: 14_100,
  };
  // The primary's agent is away, so that only QEMU acts on the failed write.
  const away = { ...base, faults: [{ at: 3900, kind: 'kill-agent' as const, node: 'a' as const, ms: 2500 }, ...base.faults] };
  const p5 = runSchedule({ ...away, replicaErrors: 'p5' }, { traceAll: true });
  assert.deepEqual(p5.outcome.violations, []);
  assert.ok(p5.result.trace.some((l) => /a checkpoint failed: a write to the secondary's disk had failed \[P5\]/.test(l)), 'the checkpoint after the failed write ended COLO');
  const reported = runSchedule({ ...base, replicaErrors: 'reported' }, { traceAll: true });
  assert.deepEqual(reported.outcome.violations, []);
  assert.ok(reported.result.trace.some((l) => /QUORUM_REPORT_BAD/.test(l)), 'the agent heard of the failed write');
  assert.ok(!reported.result.trace.some((l) => /\[P5\]/.test(l)));
});
