/**
 * npm run sim -- [--seeds N] [--from S] [--jobs J] [--seed S [--trace]]
 *
 * Runs N schedules (seeds S .. S+N-1) of the simulated pair, each a random
 * fault schedule from its seed, checking safety, liveness and status
 * truthfulness (model.ts). Ends with one line: `N schedules, V violations`.
 * A violating seed is printed with the command that replays it.
 */
import os from 'node:os';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { World, RUN_BOUND_MS, PROTECT_BOUND_MS } from './model.js';
import { scheduleFor } from './schedule.js';

export interface SeedOutcome {
  seed: number;
  violation: string | null;
  runAgainMs: number | null;
  protectedAgainMs: number | null;
  steps: number;
}

export function runSeed(seed: number, traceAll = false): { outcome: SeedOutcome; trace: string[]; describe: string } {
  const opts = { ...scheduleFor(seed), traceAll };
  const w = new World(opts);
  const r = w.run();
  return {
    outcome: { seed, violation: r.violations[0] ?? null, runAgainMs: r.runAgainMs, protectedAgainMs: r.protectedAgainMs, steps: r.steps },
    trace: r.trace,
    describe: w.describe(),
  };
}

function percentile(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

/** Runs seeds [from, from+count) on `jobs` worker threads. */
export async function runSeeds(from: number, count: number, jobs: number, onProgress?: (done: number) => void): Promise<SeedOutcome[]> {
  const file = fileURLToPath(import.meta.url);
  const outcomes: SeedOutcome[] = [];
  const per = Math.ceil(count / jobs);
  await Promise.all(
    Array.from({ length: jobs }, (_, j) => {
      const start = from + j * per;
      const n = Math.max(0, Math.min(per, from + count - start));
      if (n === 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const w = new Worker(file, { workerData: { start, n } });
        w.on('message', (m: SeedOutcome) => {
          outcomes.push(m);
          onProgress?.(outcomes.length);
        });
        w.on('error', reject);
        w.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`simulator worker exited with ${code}`))));
      });
    }),
  );
  return outcomes.sort((a, b) => a.seed - b.seed);
}

export function summarize(outcomes: SeedOutcome[], ms: number): string[] {
  const bad = outcomes.filter((o) => o.violation);
  const run = outcomes.map((o) => o.runAgainMs).filter((x): x is number => x !== null);
  const prot = outcomes.map((o) => o.protectedAgainMs).filter((x): x is number => x !== null);
  const lines = bad.slice(0, 20).map((o) => `seed ${o.seed}: ${o.violation}\n  replay: npm run sim -- --seed ${o.seed} --trace`);
  if (bad.length > 20) lines.push(`... and ${bad.length - 20} more`);
  lines.push(
    `after the last fault: VM runs again p50 ${(percentile(run, 50) / 1000).toFixed(1)} s, p99 ${(percentile(run, 99) / 1000).toFixed(1)} s, max ${(Math.max(...run) / 1000).toFixed(1)} s (bound ${RUN_BOUND_MS / 1000} s); ` +
      `protected again p50 ${(percentile(prot, 50) / 1000).toFixed(1)} s, p99 ${(percentile(prot, 99) / 1000).toFixed(1)} s, max ${(Math.max(...prot) / 1000).toFixed(1)} s (bound ${PROTECT_BOUND_MS / 1000} s)`,
  );
  lines.push(`${(ms / 1000).toFixed(1)} s, ${outcomes.reduce((a, o) => a + o.steps, 0)} agent steps`);
  lines.push(`${outcomes.length} schedules, ${bad.length} violations`);
  return lines;
}

async function main(argv: string[]): Promise<number> {
  const arg = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(
      'npm run sim -- [--seeds N] [--from S] [--jobs J]   run N fault schedules (default 2000 from seed 1)\n' +
        'npm run sim -- --seed S [--trace]                  replay one schedule; --trace prints every event\n',
    );
    return 0;
  }
  const one = arg('--seed');
  if (one !== undefined) {
    const seed = Number(one);
    const trace = argv.includes('--trace');
    const r = runSeed(seed, trace);
    const sched = scheduleFor(seed);
    process.stdout.write(`seed ${seed}: witness ${sched.witness}, paths ${sched.paths}, step failures ${sched.stepFailP}, slow checkpoints ${sched.slowCheckpoints}\n`);
    for (const f of sched.faults) process.stdout.write(`  fault ${JSON.stringify(f)}\n`);
    process.stdout.write(`  quiet from ${(sched.quietAt / 1000).toFixed(1)} s\n`);
    if (trace || r.outcome.violation) process.stdout.write(r.trace.join('\n') + '\n');
    process.stdout.write(`end state: ${r.describe}\n`);
    process.stdout.write(`${r.outcome.violation ? `VIOLATION ${r.outcome.violation}` : 'ok'}; runs again after ${r.outcome.runAgainMs} ms, protected again after ${r.outcome.protectedAgainMs} ms\n`);
    process.stdout.write(`1 schedules, ${r.outcome.violation ? 1 : 0} violations\n`);
    return r.outcome.violation ? 1 : 0;
  }
  const count = Number(arg('--seeds') ?? 2000);
  const from = Number(arg('--from') ?? 1);
  const jobs = Number(arg('--jobs') ?? Math.max(1, os.availableParallelism()));
  const t0 = performance.now();
  let last = 0;
  const outcomes = await runSeeds(from, count, jobs, (done) => {
    if (process.stderr.isTTY && performance.now() - last > 500) {
      last = performance.now();
      process.stderr.write(`\r${done}/${count} schedules`);
    }
  });
  if (process.stderr.isTTY) process.stderr.write('\r');
  const lines = summarize(outcomes, performance.now() - t0);
  process.stdout.write(lines.join('\n') + '\n');
  return outcomes.some((o) => o.violation) ? 1 : 0;
}

if (!isMainThread) {
  const { start, n } = workerData as { start: number; n: number };
  for (let s = start; s < start + n; s++) parentPort!.postMessage(runSeed(s).outcome);
} else if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
      process.exit(2);
    },
  );
}
