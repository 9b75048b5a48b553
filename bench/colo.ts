/**
 * npm run bench: the first figures of a COLO pair on this machine, all in one
 * run, written to bench/results/colo.json and printed as a table.
 *
 * - request latency of the guest's disk counter (/cgi-bin/cnt: read, +1,
 *   write, flush), plain VM vs COLO pair: median, p99, ratio
 * - checkpoint pause of the primary (STOP→RESUME), median and p99, under
 *   always-different traffic that forces checkpoints
 * - both again with the data plane in plain TCP (replication.tls: false):
 *   what TLS costs, as ratios (pairs with and without TLS alternate)
 * - time from `up` to protected (both nodes in COLO, first checkpoint done)
 */
import os from 'node:os';
import path from 'node:path';
import { labRuntime } from '../src/lab/runtime.js';
import { startPlainVm } from '../src/lab/plain.js';
import { OneHostPair } from '../src/lab/pair.js';
import { summarize, table, type Summary, writeResult } from './stats.js';

const REQUESTS = Number(process.env.LOCKSTEP_BENCH_REQUESTS ?? 300);
const CHECKPOINTS = Number(process.env.LOCKSTEP_BENCH_CHECKPOINTS ?? 100);
const UPS = Number(process.env.LOCKSTEP_BENCH_UPS ?? 3);

async function counterLatencies(base: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await fetch(`${base}/cgi-bin/cnt`, { signal: AbortSignal.timeout(15_000) });
    const body = await r.text();
    if (!/count=\d+/.test(body)) throw new Error(`bad answer: ${body}`);
    out.push(performance.now() - t0);
  }
  return out;
}

const log = (m: string) => process.stderr.write(`• ${m}\n`);

const rt = await labRuntime({ onProgress: log });
log(`runtime: ${rt.accel.toUpperCase()} ${rt.binary}`);

log(`plain VM: ${REQUESTS} counter requests`);
const plain = await startPlainVm(rt);
let plainLat: number[];
try {
  await counterLatencies(plain.httpBase, 10); // warm-up
  plainLat = await counterLatencies(plain.httpBase, REQUESTS);
} finally {
  await plain.stop({ removeDir: true });
}

const ups: number[] = [];
for (let i = 0; i < UPS; i++) {
  log(`up → protected, run ${i + 1}/${UPS}`);
  const t0 = performance.now();
  const p = await OneHostPair.start({ checkpointDelayMs: 2000, waitGuest: false });
  ups.push(performance.now() - t0);
  await p.stop({ removeDir: true });
}

/**
 * One COLO pair: REQUESTS counter requests, then CHECKPOINTS checkpoints forced
 * by always-different traffic; its latencies and the primary's pauses.
 */
async function coloRound(tls: boolean, requests: number, checkpoints: number): Promise<{ lat: number[]; pauses: number[]; checkpointsDuringRequests: number }> {
  const pair = await OneHostPair.start({ checkpointDelayMs: 2000, tls });
  try {
    await counterLatencies(pair.httpBase, 10);
    const c0 = pair.checkpoints();
    const lat = await counterLatencies(pair.httpBase, requests);
    const checkpointsDuringRequests = pair.checkpoints() - c0;
    const before = pair.pauses().length;
    const deadline = Date.now() + 10 * 60_000;
    while (pair.pauses().length - before < checkpoints && Date.now() < deadline) {
      await Promise.all([0, 1].map(() => fetch(`${pair.httpBase}/cgi-bin/info`, { signal: AbortSignal.timeout(15_000) }).then((r) => r.text())));
    }
    return { lat, pauses: pair.pauses().slice(before), checkpointsDuringRequests };
  } finally {
    await pair.stop({ removeDir: true });
  }
}

// The data plane with TLS (the default) and without, in alternating halves so that both see the same machine.
const coloLat: number[] = [];
const plainTcpLat: number[] = [];
const pauses: number[] = [];
const plainTcpPauses: number[] = [];
let checkpointsDuringRequests = 0;
for (const half of [0, 1]) {
  for (const tls of half === 0 ? [true, false] : [false, true]) {
    log(`COLO pair, data plane ${tls ? 'TLS' : 'plain TCP'} (half ${half + 1}/2): ${REQUESTS / 2} counter requests, then ${CHECKPOINTS / 2} forced checkpoints`);
    const r = await coloRound(tls, Math.round(REQUESTS / 2), Math.round(CHECKPOINTS / 2));
    (tls ? coloLat : plainTcpLat).push(...r.lat);
    (tls ? pauses : plainTcpPauses).push(...r.pauses);
    if (tls) checkpointsDuringRequests += r.checkpointsDuringRequests;
  }
}

const plainS = summarize(plainLat);
const coloS = summarize(coloLat);
const pauseS = summarize(pauses);
const plainTcpS = summarize(plainTcpLat);
const plainTcpPauseS = summarize(plainTcpPauses);
const upS = summarize(ups);
const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;
const result = {
  when: new Date().toISOString(),
  machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? '', memGiB: Math.round(os.totalmem() / 2 ** 30) },
  runtime: { accel: rt.accel, binary: rt.binary },
  counterRequestMs: { plain: plainS, colo: coloS, ratio: { median: Math.round((coloS.median / plainS.median) * 100) / 100, p99: Math.round((coloS.p99 / plainS.p99) * 100) / 100 } },
  checkpointsDuringCounterRequests: checkpointsDuringRequests,
  checkpointPauseMs: pauseS,
  /** The same COLO figures with replication.tls: false, and TLS's cost as ratios (TLS / plain TCP). */
  dataPlanePlainTcp: {
    counterRequestMs: plainTcpS,
    checkpointPauseMs: plainTcpPauseS,
    tlsRatio: { requestMedian: ratio(coloS.median, plainTcpS.median), requestP99: ratio(coloS.p99, plainTcpS.p99), pauseMedian: ratio(pauseS.median, plainTcpPauseS.median), pauseP99: ratio(pauseS.p99, plainTcpPauseS.p99) },
  },
  upToProtectedMs: upS,
};
const file = writeResult('colo', result);

const row = (name: string, s: Summary, extra = '') => [name, String(s.n), s.median.toFixed(1), s.p99.toFixed(1), s.max.toFixed(1), extra];
process.stdout.write(
  `\nCOLO figures (${rt.accel.toUpperCase()}, ${result.machine.cpus} cpus)\n` +
    table([
      ['figure', 'n', 'median ms', 'p99 ms', 'max ms', ''],
      row('counter request, plain VM', plainS),
      row('counter request, COLO', coloS, `ratio ${result.counterRequestMs.ratio.median}x median, ${result.counterRequestMs.ratio.p99}x p99`),
      row('counter request, COLO, data plane without TLS', plainTcpS, `TLS costs ${result.dataPlanePlainTcp.tlsRatio.requestMedian}x median, ${result.dataPlanePlainTcp.tlsRatio.requestP99}x p99`),
      row('checkpoint pause (primary)', pauseS),
      row('checkpoint pause, data plane without TLS', plainTcpPauseS, `TLS costs ${result.dataPlanePlainTcp.tlsRatio.pauseMedian}x median, ${result.dataPlanePlainTcp.tlsRatio.pauseP99}x p99`),
      row('up → protected', upS),
    ]) +
    `\n\n(${checkpointsDuringRequests} checkpoints happened during the ${REQUESTS} COLO counter requests)\nwritten to ${path.relative(process.cwd(), file)}\n`,
);
