/**
 * Takeover figures, with and without announce-self, side by side in one run
 * (npm run bench; needs root for the lab's network namespaces): a pair in
 * bridge mode on the lab's separate hosts with its agents and a witness;
 * kill -9 of the primary QEMU, whose host and switch port stay up, so the
 * switch still sends the VM's traffic there until something tells it
 * otherwise. Two cases:
 * - busy: a client on the guest LAN sends a counter request every 10 ms and
 *   keeps an echo connection; measured: kill → the first answer to a request
 *   sent after the kill (only the survivor can give it), and the longest gap
 *   between two good answers;
 * - idle: the client stops before the kill; once status reports the
 *   takeover (and 1 s more), one new request: its time until answered.
 * The variants alternate, kill after kill, so both see the same machine.
 * Written to bench/results/takeover.json.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HostsLab } from '../src/lab/hosts-scenario.js';
import { interruption } from '../src/lab/client-driver.js';
import { run as exec } from '../src/util/exec.js';
import { sleep, waitFor } from '../src/util/time.js';
import { summarize, table, writeResult, type Summary } from './stats.js';

/** Kills per variant and case. */
const KILLS = Number(process.env.LOCKSTEP_BENCH_KILLS ?? 4);
/** How long the client may go unanswered after a kill before the kill counts as "no answer". */
const ANSWER_TIMEOUT_MS = 120_000;
const log = (m: string) => process.stderr.write(`• ${m}\n`);

if (process.getuid?.() !== 0) {
  log('takeover benchmark skipped: it needs root (network namespaces)');
  process.exit(0);
}

interface Variant {
  name: string;
  announce: boolean;
  busyFirstAnswer: number[];
  busyGaps: number[];
  idleRequest: number[];
  /** Kills after which the client had no answer within ANSWER_TIMEOUT_MS. */
  unanswered: number;
  /** Start-ups whose traffic stalled before any kill (reported, not hidden). */
  startStalls: string[];
}
const variant = (name: string, announce: boolean): Variant => ({ name, announce, busyFirstAnswer: [], busyGaps: [], idleRequest: [], unanswered: 0, startStalls: [] });
const variants = [variant('announce-self on (default)', true), variant('announce-self off', false)];

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-bench-'));
const lab = await HostsLab.create(root);

async function start(v: Variant, what: string) {
  try {
    return await lab.startPair({ clientIntervalMs: 10, minTraffic: 50, reprotect: false, announce: v.announce });
  } catch (err) {
    v.startStalls.push((err as Error).message);
    log(`${what}: the pair's traffic stalled before the kill; counted, not measured (${(err as Error).message})`);
    return undefined;
  }
}

async function busy(v: Variant, what: string): Promise<void> {
  const run = await start(v, what);
  if (!run) return;
  const primary = (await run.status()).nodes.find((n) => n.role === 'primary')!;
  const before = run.client.latest;
  const killedAt = Date.now();
  process.kill(primary.pid!, 'SIGKILL');
  const answered = await run.client.until((t) => t.httpOk >= before.httpOk + 100, ANSWER_TIMEOUT_MS, 'answers from the survivor').then(
    () => true,
    () => false,
  );
  const s = await run.stop();
  // From the client's own record: the first answer to a request sent after the kill (only the survivor can give it),
  // and the longest time without an answer.
  const felt = interruption(s.http.answers, killedAt);
  if (!answered || felt.firstAfterFaultMs === undefined) {
    v.unanswered++;
    log(`${what}: no answer within ${ANSWER_TIMEOUT_MS} ms`);
    return;
  }
  v.busyFirstAnswer.push(felt.firstAfterFaultMs);
  v.busyGaps.push(felt.longestGapMs);
  log(`${what}: first answer to a request sent after the kill ${felt.firstAfterFaultMs} ms after it, longest gap ${felt.longestGapMs} ms`);
}

async function idle(v: Variant, what: string): Promise<void> {
  const run = await start(v, what);
  if (!run) return;
  try {
    await run.client.finish();
    await sleep(2000);
    const primary = (await run.status()).nodes.find((n) => n.role === 'primary')!;
    process.kill(primary.pid!, 'SIGKILL');
    await waitFor('the takeover', async () => ((await run.status()).lastFailover ? true : undefined), { timeoutMs: 60_000, intervalMs: 100 });
    await sleep(1000);
    const t0 = performance.now();
    const r = await exec('ip', ['netns', 'exec', lab.hosts.ns.client, 'curl', '-sS', '-o', '/dev/null', '-m', String(ANSWER_TIMEOUT_MS / 1000), 'http://10.0.2.15/cgi-bin/cnt?r=idle'], {
      allowFailure: true,
      timeoutMs: ANSWER_TIMEOUT_MS + 10_000,
    });
    const ms = Math.round(performance.now() - t0);
    if (r.code !== 0) {
      v.unanswered++;
      log(`${what}: no answer within ${ANSWER_TIMEOUT_MS} ms (${r.stderr.trim()})`);
      return;
    }
    v.idleRequest.push(ms);
    log(`${what}: the first request after the takeover answered in ${ms} ms`);
  } finally {
    await run.stop();
  }
}

try {
  for (let i = 1; i <= KILLS; i++) {
    for (const v of variants) await busy(v, `busy, kill ${i}/${KILLS}, ${v.name}`);
    for (const v of variants) await idle(v, `idle, kill ${i}/${KILLS}, ${v.name}`);
  }
} finally {
  await lab.remove();
  fs.rmSync(root, { recursive: true, force: true });
}

const summaries = variants.map((v) => ({
  name: v.name,
  announce: v.announce,
  unanswered: v.unanswered,
  startStalls: v.startStalls,
  busyKillToFirstAnswerAfterMs: summarize(v.busyFirstAnswer),
  busyLongestClientGapMs: summarize(v.busyGaps),
  idleFirstRequestAfterTakeoverMs: summarize(v.idleRequest),
}));
const [on, off] = summaries as [(typeof summaries)[0], (typeof summaries)[0]];
const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;
const result = {
  when: new Date().toISOString(),
  killsPerVariantAndCase: KILLS,
  clientIntervalMs: 10,
  answerTimeoutMs: ANSWER_TIMEOUT_MS,
  variants: summaries,
  /** Without / with announce-self, at the median. */
  ratioOffToOn: {
    busyKillToFirstGoodAnswer: ratio(off.busyKillToFirstAnswerAfterMs.median, on.busyKillToFirstAnswerAfterMs.median),
    idleFirstRequest: ratio(off.idleFirstRequestAfterTakeoverMs.median, on.idleFirstRequestAfterTakeoverMs.median),
  },
};
const file = writeResult('takeover', result);
const row = (label: string, x: Summary) => [label, String(x.n), x.median.toFixed(0), x.p99.toFixed(0), x.max.toFixed(0)];
process.stdout.write(
  `\nTakeover after kill -9 of the primary QEMU (agents + witness, bridge mode, ${KILLS} kills per variant and case, alternating)\n` +
    table([
      ['figure', 'n', 'p50 ms', 'p99 ms', 'max ms'],
      ...summaries.flatMap((v) => [
        row(`busy: kill → answer to a request sent after it, ${v.name}`, v.busyKillToFirstAnswerAfterMs),
        row(`busy: longest gap, ${v.name}`, v.busyLongestClientGapMs),
        row(`idle: first request after takeover, ${v.name}`, v.idleFirstRequestAfterTakeoverMs),
      ]),
    ]) +
    `\nwithout / with announce-self at the median: busy ×${result.ratioOffToOn.busyKillToFirstGoodAnswer}, idle ×${result.ratioOffToOn.idleFirstRequest}` +
    summaries.map((v) => (v.unanswered ? `\n${v.name}: ${v.unanswered} kill(s) without an answer within ${ANSWER_TIMEOUT_MS} ms` : '')).join('') +
    summaries.map((v) => (v.startStalls.length ? `\n${v.name}: ${v.startStalls.length} start-up(s) stalled before the kill, not measured (startStalls in the JSON)` : '')).join('') +
    `\nwritten to ${path.relative(process.cwd(), file)}\n`,
);
