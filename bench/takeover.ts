/**
 * Takeover figures over repeated kills (npm run bench; needs root for the
 * lab's network namespaces): a pair in bridge mode on the lab's separate
 * hosts with its agents and a witness, a client on the guest LAN sending a
 * counter request every 10 ms;
 * kill -9 the primary QEMU, and measure
 * - kill → first good answer from the survivor (p50, p99);
 * - the longest gap between two good answers the client saw.
 * Written to bench/results/takeover.json.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HostsLab } from '../src/lab/hosts-scenario.js';
import { summarize, table, writeResult } from './stats.js';

const KILLS = Number(process.env.LOCKSTEP_BENCH_KILLS ?? 10);
const log = (m: string) => process.stderr.write(`• ${m}\n`);

if (process.getuid?.() !== 0) {
  log('takeover benchmark skipped: it needs root (network namespaces)');
  process.exit(0);
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-bench-'));
const lab = await HostsLab.create(root);
const firstAnswer: number[] = [];
const gaps: number[] = [];
const echoMax: number[] = [];
/** Start-ups whose traffic stalled before any kill (reported, not hidden). */
const startStalls: string[] = [];
try {
  for (let i = 1; i <= KILLS; i++) {
    let run;
    try {
      run = await lab.startPair({ clientIntervalMs: 10, minTraffic: 50, reprotect: false });
    } catch (err) {
      startStalls.push((err as Error).message);
      log(`kill ${i}/${KILLS}: the pair's traffic stalled before the kill; counted, not measured (${(err as Error).message})`);
      continue;
    }
    const primary = (await run.status()).nodes.find((n) => n.role === 'primary')!;
    const before = run.client.latest;
    const killedAt = Date.now();
    process.kill(primary.pid!, 'SIGKILL');
    await run.client.until((t) => t.httpOk >= before.httpOk + 100, 60_000, 'answers from the survivor');
    const s = await run.stop();
    const after = s.http.okTimes.find((t) => t > killedAt);
    if (after === undefined) throw new Error(`kill ${i}: no answer after the kill`);
    firstAnswer.push(after - killedAt);
    let gap = 0;
    for (let k = 1; k < s.http.okTimes.length; k++) gap = Math.max(gap, s.http.okTimes[k]! - s.http.okTimes[k - 1]!);
    gaps.push(gap);
    echoMax.push(s.echo.maxMs);
    log(`kill ${i}/${KILLS}: first good answer after ${after - killedAt} ms, longest gap ${gap} ms, echo errors ${s.echo.errors.length}`);
  }
} finally {
  await lab.remove();
  fs.rmSync(root, { recursive: true, force: true });
}

const result = {
  when: new Date().toISOString(),
  kills: KILLS,
  measured: firstAnswer.length,
  startStalls,
  clientIntervalMs: 10,
  killToFirstGoodAnswerMs: summarize(firstAnswer),
  longestClientGapMs: summarize(gaps),
  echoRoundTripMaxMs: summarize(echoMax),
};
const file = writeResult('takeover', result);
const r = result.killToFirstGoodAnswerMs;
const g = result.longestClientGapMs;
process.stdout.write(
  `\nTakeover after kill -9 of the primary (${firstAnswer.length} kills measured, agents + witness, bridge mode)\n` +
    table([
      ['figure', 'n', 'p50 ms', 'p99 ms', 'max ms'],
      ['kill → first good answer', String(r.n), r.median.toFixed(0), r.p99.toFixed(0), r.max.toFixed(0)],
      ['longest gap, client every 10 ms', String(g.n), g.median.toFixed(0), g.p99.toFixed(0), g.max.toFixed(0)],
    ]) +
    (startStalls.length ? `\n${startStalls.length} start-up(s) stalled before the kill and were not measured (see startStalls in the JSON)` : '') +
    `\nwritten to ${path.relative(process.cwd(), file)}\n`,
);
