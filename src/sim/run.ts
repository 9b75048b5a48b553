/**
 * npm run sim -- [--seeds N] [--from S] [--jobs J]
 * npm run sim -- --seed S [--trace] [--store FILE]
 * npm run sim -- --replay FILE [--planted] [--trace]
 * npm run sim -- --mutants [NAME,...] [--budget N] [--jobs J] [--store DIR]
 * npm run sim -- --amnesia [--seeds N]
 *
 * Runs N schedules (seeds S .. S+N-1) of the simulated pair, each a fault
 * schedule from its seed, checking safety, liveness and status truthfulness
 * (invariants.ts). Ends with one line: `N schedules, V violations`. A
 * violating seed is printed with the command that replays it, and --store
 * keeps its schedule as data. --mutants plants each kept mutant in turn
 * (mutants.ts) and reports which invariant caught it, after how many schedules.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { World, type SimResult } from './world.js';
import { scheduleFor } from './schedule.js';
import { RUN_BOUND_MS, PROTECT_BOUND_MS, RUN_DURING_FAULTS_MS, PROMPT_SLACK_MS, type ViolationKind, type Violation } from './invariants.js';
import type { Schedule } from './schedule-types.js';
import { plant, MUTANTS, type MutantName } from '../node/mutants.js';
import { MUTANT_CHECKS, mutantSchedule } from './mutants.js';
import { packageRoot } from '../util/paths.js';

export interface Outcome {
  seed: number;
  /** Every kind of violation the run met, in order, each with its first occurrence. */
  violations: Array<{ kind: ViolationKind; detail: string; at: number }>;
  runAgainMs: number | null;
  protectedAgainMs: number | null;
  longestDownWhileAbleMs: number;
  hostLossesJudged: number;
  slowestTakeoverMs: number;
  cutsJudged: number;
  slowestCutMs: number;
  restartsJudged: number;
  steps: number;
}

export function runSchedule(sched: Schedule, o: { traceAll?: boolean; stopAtFirst?: boolean } = {}): { outcome: Outcome; result: SimResult; describe: string } {
  const w = new World(sched, o);
  const r = w.run();
  const firsts = new Map<ViolationKind, { kind: ViolationKind; detail: string; at: number }>();
  for (const v of r.violations) if (!firsts.has(v.kind)) firsts.set(v.kind, { kind: v.kind, detail: v.detail, at: v.at });
  return {
    outcome: { seed: sched.seed, violations: [...firsts.values()], runAgainMs: r.runAgainMs, protectedAgainMs: r.protectedAgainMs, longestDownWhileAbleMs: r.longestDownWhileAbleMs, hostLossesJudged: r.hostLossesJudged, slowestTakeoverMs: r.slowestTakeoverMs, cutsJudged: r.cutsJudged, slowestCutMs: r.slowestCutMs, restartsJudged: r.restartsJudged, steps: r.steps },
    result: r,
    describe: w.describe(),
  };
}

export function runSeed(seed: number, traceAll = false): { outcome: Outcome; trace: string[]; describe: string } {
  const r = runSchedule(scheduleFor(seed), { traceAll });
  return { outcome: r.outcome, trace: r.result.trace, describe: r.describe };
}

function percentile(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

interface WorkerTask {
  start: number;
  n: number;
  mutants: MutantName[];
  /** Schedules for a mutant check (mutantSchedule), else the generator's. */
  forMutant: MutantName | null;
  stopAtFirst: boolean;
  /** Schedules with the witness losing its state (--amnesia). */
  amnesia: boolean;
}

/** Runs seeds [from, from+count) on `jobs` worker threads, with `mutants` planted; `stop` ends the run early. */
export async function runSeeds(
  from: number,
  count: number,
  jobs: number,
  o: { mutants?: MutantName[]; forMutant?: MutantName | null; stopAtFirst?: boolean; amnesia?: boolean; onOutcome?: (o: Outcome) => boolean | void } = {},
): Promise<Outcome[]> {
  const file = fileURLToPath(import.meta.url);
  const outcomes: Outcome[] = [];
  const per = Math.ceil(count / jobs);
  const workers: Worker[] = [];
  let stopped = false;
  await Promise.all(
    Array.from({ length: jobs }, (_, j) => {
      const start = from + j * per;
      const n = Math.max(0, Math.min(per, from + count - start));
      if (n === 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const task: WorkerTask = { start, n, mutants: o.mutants ?? [], forMutant: o.forMutant ?? null, stopAtFirst: o.stopAtFirst ?? false, amnesia: o.amnesia ?? false };
        const w = new Worker(file, { workerData: task });
        workers.push(w);
        w.on('message', (m: Outcome) => {
          outcomes.push(m);
          if (o.onOutcome?.(m) === true && !stopped) {
            stopped = true;
            for (const x of workers) void x.terminate();
          }
        });
        w.on('error', reject);
        w.on('exit', (code) => (code === 0 || stopped ? resolve() : reject(new Error(`simulator worker exited with ${code}`))));
      });
    }),
  );
  return outcomes.sort((a, b) => a.seed - b.seed);
}

/** The largest of many numbers (Math.max(...xs) overflows the stack past about 120,000 of them: a 200,000-schedule soak did). */
function maxOf(xs: readonly number[]): number {
  let m = -Infinity;
  for (const x of xs) m = Math.max(m, x);
  return m;
}

export function summarize(outcomes: Outcome[], ms: number): string[] {
  const bad = outcomes.filter((o) => o.violations.length);
  const run = outcomes.map((o) => o.runAgainMs).filter((x): x is number => x !== null);
  const prot = outcomes.map((o) => o.protectedAgainMs).filter((x): x is number => x !== null);
  const lines = bad.slice(0, 20).map((o) => `seed ${o.seed}: ${o.violations.map((v) => `${v.kind} (${(v.at / 1000).toFixed(3)} s: ${v.detail})`).join('; ')}\n  replay: npm run sim -- --seed ${o.seed} --trace`);
  if (bad.length > 20) lines.push(`... and ${bad.length - 20} more`);
  const kinds = new Map<string, number>();
  for (const o of bad) for (const v of o.violations) kinds.set(v.kind, (kinds.get(v.kind) ?? 0) + 1);
  if (kinds.size) lines.push(`violations by kind: ${[...kinds].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  const s = (x: number) => (x / 1000).toFixed(1);
  lines.push(
    `after the last fault: VM runs again p50 ${s(percentile(run, 50))} s, p99 ${s(percentile(run, 99))} s, max ${s(maxOf(run))} s (bound ${RUN_BOUND_MS / 1000} s); ` +
      `protected again p50 ${s(percentile(prot, 50))} s, p99 ${s(percentile(prot, 99))} s, max ${s(maxOf(prot))} s (bound ${PROTECT_BOUND_MS / 1000} s)`,
  );
  const down = outcomes.map((o) => o.longestDownWhileAbleMs).filter((x) => x > 0);
  lines.push(
    `while a node could run it (the newest disk, the arbiter reachable), the VM ran again within p50 ${s(percentile(down, 50))} s, p99 ${s(percentile(down, 99))} s, max ${s(maxOf(down))} s (bound ${RUN_DURING_FAULTS_MS / 1000} s; ${down.length} schedules had such a wait)`,
  );
  const losses = outcomes.reduce((a, o) => a + o.hostLossesJudged, 0);
  if (losses) {
    const slowest = maxOf(outcomes.map((o) => o.slowestTakeoverMs));
    lines.push(`a primary's host lost alone (prompt-takeover judged ${losses}): the secondary decided to take over within ${s(slowest)} s at the slowest (bound: the heartbeat timeout + ${PROMPT_SLACK_MS} ms)`);
  }
  const cuts = outcomes.reduce((a, o) => a + o.cutsJudged, 0);
  if (cuts) {
    const slowest = maxOf(outcomes.map((o) => o.slowestCutMs));
    lines.push(`the replication link alone cut (prompt-cut judged ${cuts}): the primary decided to carry on alone within ${s(slowest)} s at the slowest (bound: the heartbeat timeout + ${PROMPT_SLACK_MS} ms)`);
  }
  const restarts = outcomes.reduce((a, o) => a + o.restartsJudged, 0);
  if (restarts) lines.push(`an agent of a protected pair restarted alone (restart-kept judged ${restarts}): the pair stayed one`);
  lines.push(`${(ms / 1000).toFixed(1)} s, ${outcomes.reduce((a, o) => a + o.steps, 0)} agent steps`);
  lines.push(`${outcomes.length} schedules, ${bad.length} violations`);
  return lines;
}

/** The mutation check: each mutant planted alone, schedules run until the invariant of its rule catches it (or the budget ends). */
export async function checkMutants(
  names: MutantName[],
  budget: number,
  jobs: number,
  log: (line: string) => void,
  storeDir?: string,
): Promise<Array<{ mutant: MutantName; caughtBy: ViolationKind | null; schedules: number | null; seed: number | null; stored: string | null; expected: ViolationKind[]; ms: number }>> {
  const rows = [];
  for (const m of names) {
    const check = MUTANT_CHECKS[m];
    const t0 = performance.now();
    let first: Outcome | null = null;
    let seen = 0;
    // In rounds, so that a catch ends the search early. A run goes on after its first violation: the mutant is caught
    // by the first schedule that meets the invariant of its rule (with a covering rule planted away too, that one's
    // own invariant may come first).
    let wrong: Outcome | null = null;
    for (let from = 1; from <= budget && !first; from += jobs * 25) {
      const count = Math.min(jobs * 25, budget - from + 1);
      const outs = await runSeeds(from, count, jobs, { mutants: [m, ...(check.alongside?.mutants ?? [])], forMutant: m });
      seen += outs.length;
      first = outs.find((o) => o.violations.some((v) => check.caughtBy.includes(v.kind)) && controlHolds(m, o.seed)) ?? null;
      wrong ??= outs.find((o) => o.violations.length && !o.violations.some((v) => check.caughtBy.includes(v.kind))) ?? outs.find((o) => o.violations.length && !controlHolds(m, o.seed)) ?? null;
    }
    const v = first?.violations.find((x) => check.caughtBy.includes(x.kind)) ?? null;
    // Not within the budget: a stored schedule of its own (found by hand, by the soak or by an earlier focus) may.
    const stored = v ? null : storedCatch(m);
    const row = { mutant: m, caughtBy: v?.kind ?? stored?.kind ?? null, schedules: first ? first.seed : null, seed: first?.seed ?? null, stored: stored?.file ?? null, expected: check.caughtBy, ms: performance.now() - t0 };
    rows.push(row);
    if (first && storeDir) storeCatch(storeDir, m, first, check.caughtBy);
    const other = wrong?.violations[0];
    const with_ = check.alongside ? ` (with ${check.alongside.mutants.join(', ')})` : '';
    const secs = `(${((performance.now() - t0) / 1000).toFixed(1)} s)`;
    if (v) log(`caught  ${m}${with_}: ${v.kind} after ${first!.seed} schedules (${v.detail.slice(0, 160)}) ${secs}`);
    else if (stored) log(`stored  ${m}${with_}: ${stored.kind} by its stored schedule ${stored.file}, not in ${seen} drawn schedules ${secs}`);
    else log(`NOT CAUGHT  ${m}${with_}: not in ${seen} schedules${other ? `; seen instead: ${other.kind} (seed ${wrong!.seed})` : ''} ${secs}`);
  }
  return rows;
}

/**
 * A schedule that once broke the core (or a mutant's first catch), kept as
 * data in test/sim-regressions/ so that it replays whatever the generator
 * becomes. It names the mutant that puts its bug back: with it planted the
 * schedule must still fail, by the invariant of its rule (else it no longer
 * reproduces the bug and must be found again); without, it passes.
 */
export interface StoredRegression {
  name: string;
  found: string;
  mutants: MutantName[];
  caughtBy: ViolationKind[];
  /** The covering rules planted away with the mutant; planted alone, the rule itself keeps the schedule clean. */
  control?: MutantName[];
  schedule: Schedule;
}

/** The stored regressions, by file name. */
export function storedRegressions(dir = path.join(packageRoot(), 'test', 'sim-regressions')): Array<{ file: string; r: StoredRegression }> {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((file) => ({ file, r: JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as StoredRegression }));
}

/**
 * Replays a stored regression three ways, as `npm test` and `--mutants`
 * check it: clean as the code is; with its mutants planted (`caught`: the
 * first violation by an invariant of `caughtBy`); with its control alone
 * (`controlMeets`: whether that still meets such an invariant, which it must
 * not).
 */
export function replayStored(r: StoredRegression, caughtBy: readonly ViolationKind[] = r.caughtBy): { clean: Violation[]; planted: Violation[]; caught: Violation | null; controlMeets: boolean } {
  try {
    plant([]);
    const clean = runSchedule(r.schedule).outcome.violations;
    plant(r.mutants);
    const planted = runSchedule(r.schedule).outcome.violations;
    const caught = planted.find((x) => caughtBy.includes(x.kind)) ?? null;
    let controlMeets = false;
    if (r.control) {
      plant(r.control);
      controlMeets = runSchedule(r.schedule).outcome.violations.some((x) => caughtBy.includes(x.kind));
    }
    return { clean, planted, caught, controlMeets };
  } finally {
    plant([]);
  }
}

/** The first stored regression whose first mutant is `m` and that catches it as `npm test` checks. */
function storedCatch(m: MutantName): { file: string; kind: ViolationKind } | null {
  for (const { file, r } of storedRegressions()) {
    if (r.mutants[0] !== m) continue;
    const x = replayStored(r, MUTANT_CHECKS[m].caughtBy);
    if (x.clean.length === 0 && x.caught && !x.controlMeets) return { file, kind: x.caught.kind };
  }
  return null;
}

/**
 * A catch counts for the rule only if the same schedule is clean without the
 * mutant (else it is a finding of the code as it is, not a catch: focus
 * schedule 1,302 of take-back-retried-as-resync was one), and, with the
 * covering rule planted away alone (the control), does not meet the rule's
 * invariant: then it is the rule that kept it away.
 */
export function controlHolds(m: MutantName, seed: number): boolean {
  const control = MUTANT_CHECKS[m].alongside?.mutants;
  try {
    plant([]);
    if (runSchedule(mutantSchedule(m, seed)).outcome.violations.length > 0) return false;
    if (!control) return true;
    plant(control);
    return !runSchedule(mutantSchedule(m, seed)).outcome.violations.some((v) => MUTANT_CHECKS[m].caughtBy.includes(v.kind));
  } finally {
    plant([]);
  }
}

/** Keeps a mutant's first catch as a stored regression (test/sim-regressions/), unless one for it is there already. */
function storeCatch(dir: string, m: MutantName, o: Outcome, caughtBy: ViolationKind[]): void {
  const file = path.join(dir, `mutant-${m}.json`);
  if (fs.existsSync(file)) return;
  const check = MUTANT_CHECKS[m];
  const v = o.violations.find((x) => caughtBy.includes(x.kind))!;
  const entry = {
    name: MUTANTS[m],
    found: `npm run sim -- --mutants ${m}: schedule ${o.seed} of its focus; ${v.kind} at ${(v.at / 1000).toFixed(3)} s: ${v.detail}`,
    mutants: [m, ...(check.alongside?.mutants ?? [])],
    caughtBy,
    ...(check.alongside ? { control: check.alongside.mutants, why: check.alongside.why } : {}),
    schedule: mutantSchedule(m, o.seed),
  };
  fs.writeFileSync(file, JSON.stringify(entry, null, 2) + '\n');
}

async function main(argv: string[]): Promise<number> {
  const arg = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(
      'npm run sim -- [--seeds N] [--from S] [--jobs J]        run N fault schedules (default 2000 from seed 1)\n' +
        'npm run sim -- --seed S [--trace] [--store FILE]       one schedule; --trace prints every event; --store keeps it as data\n' +
        'npm run sim -- --replay FILE [--planted] [--trace]     a stored schedule; --planted puts its bug back (its mutants)\n' +
        'npm run sim -- --mutants [A,B] [--budget N] [--store DIR] each kept mutant planted in turn: which invariant catches it, after how many\n' +
        '                                                    schedules; --store keeps each first catch as a stored regression\n' +
        'npm run sim -- --amnesia [--seeds N]               schedules where the witness restarts with nothing on record (not in the generator)\n',
    );
    return 0;
  }
  const jobs = Number(arg('--jobs') ?? Math.max(1, os.availableParallelism()));
  if (argv.includes('--mutants')) {
    const list = arg('--mutants');
    const names = (list && !list.startsWith('--') ? list.split(',') : Object.keys(MUTANTS)) as MutantName[];
    for (const n of names) if (!(n in MUTANTS)) throw new Error(`no mutant named ${n}; the kept ones: ${Object.keys(MUTANTS).join(', ')}`);
    const rows = await checkMutants(names, Number(arg('--budget') ?? 2000), jobs, (l) => process.stdout.write(l + '\n'), arg('--store'));
    const missed = rows.filter((r) => r.caughtBy === null || !r.expected.includes(r.caughtBy));
    const storedOnly = rows.filter((r) => r.stored !== null && r.caughtBy !== null).length;
    process.stdout.write(`${rows.length} mutants, ${rows.length - missed.length} caught by the invariant of their rule (${rows.length - missed.length - storedOnly} within the budget, ${storedOnly} by a stored schedule only)\n`);
    return missed.length ? 1 : 0;
  }
  const replay = arg('--replay');
  const one = arg('--seed');
  if (replay !== undefined || one !== undefined) {
    const stored = replay !== undefined ? (JSON.parse(fs.readFileSync(replay, 'utf8')) as { schedule: Schedule; mutants?: MutantName[] }) : null;
    const sched = stored ? stored.schedule : scheduleFor(Number(one));
    // A stored regression replays against the code as it is; --planted puts its bug back (its mutants).
    plant(argv.includes('--planted') ? (stored?.mutants ?? []) : []);
    const trace = argv.includes('--trace');
    const r = runSchedule(sched, { traceAll: trace });
    const store = arg('--store');
    if (store) fs.writeFileSync(store, JSON.stringify({ name: `seed ${sched.seed}`, why: r.outcome.violations.map((v) => v.kind).join(', '), schedule: sched }, null, 2) + '\n');
    process.stdout.write(`schedule ${sched.seed}: witness ${sched.witness}, paths ${sched.paths}, clocks ${JSON.stringify(sched.clocks)}, step failures ${sched.stepFailP}, slow checkpoints ${sched.slowCheckpoints}${argv.includes('--planted') && stored?.mutants?.length ? `, mutants ${stored.mutants.join(', ')} planted` : ''}\n`);
    for (const f of sched.faults) process.stdout.write(`  fault ${JSON.stringify(f)}\n`);
    process.stdout.write(`  quiet from ${(sched.quietAt / 1000).toFixed(1)} s\n`);
    if (trace || r.outcome.violations.length) process.stdout.write(r.result.trace.join('\n') + '\n');
    process.stdout.write(`end state: ${r.describe}\n`);
    for (const v of r.outcome.violations) process.stdout.write(`VIOLATION ${v.kind} at ${(v.at / 1000).toFixed(3)} s: ${v.detail}\n`);
    process.stdout.write(`runs again after ${r.outcome.runAgainMs} ms, protected again after ${r.outcome.protectedAgainMs} ms\n`);
    process.stdout.write(`1 schedules, ${r.outcome.violations.length ? 1 : 0} violations\n`);
    return r.outcome.violations.length ? 1 : 0;
  }
  const count = Number(arg('--seeds') ?? 2000);
  const from = Number(arg('--from') ?? 1);
  if (argv.includes('--amnesia')) {
    // The witness restarting with nothing on record, as often as other faults: what it costs today.
    const outs = await runSeeds(from, count, jobs, { amnesia: true });
    process.stdout.write(summarize(outs, 0).join('\n') + '\n');
    return outs.some((o) => o.violations.length) ? 1 : 0;
  }
  const t0 = performance.now();
  let last = 0;
  let done = 0;
  const outcomes = await runSeeds(from, count, jobs, {
    onOutcome: (o) => {
      done++;
      // A long soak says each failing seed as it is found, and how far it got, so that nothing is lost if it ends early.
      if (o.violations.length) process.stderr.write(`${process.stderr.isTTY ? '\n' : ''}seed ${o.seed}: ${o.violations.map((v) => v.kind).join(', ')}\n`);
      if (process.stderr.isTTY && performance.now() - last > 500) {
        last = performance.now();
        process.stderr.write(`\r${done}/${count} schedules`);
      } else if (!process.stderr.isTTY && done % 10_000 === 0) {
        process.stderr.write(`${done}/${count} schedules, ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
      }
    },
  });
  if (process.stderr.isTTY) process.stderr.write('\r');
  process.stdout.write(summarize(outcomes, performance.now() - t0).join('\n') + '\n');
  return outcomes.some((o) => o.violations.length) ? 1 : 0;
}

if (!isMainThread) {
  const t = workerData as WorkerTask;
  plant(t.mutants);
  for (let s = t.start; s < t.start + t.n; s++) {
    const sched = t.forMutant ? mutantSchedule(t.forMutant, s) : scheduleFor(s, t.amnesia ? { witness: true, weights: { 'witness-amnesia': 1 } } : {});
    const o = runSchedule(sched, { stopAtFirst: t.stopAtFirst }).outcome;
    parentPort!.postMessage(o);
    if (t.stopAtFirst && o.violations.length) break;
  }
} else if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
      process.exit(2);
    },
  );
}
