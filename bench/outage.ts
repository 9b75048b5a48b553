/**
 * The outage matrix (npm run bench; needs root for the lab's namespaces): VM
 * web on the daemons of two lab hosts with a witness, bridge mode, a client on
 * the guest LAN with one TCP echo session and a counter request every 20 ms
 * (each gives up after 10 s), beside two load clients (the counter read every
 * 50 ms, and a page that differs on every call, a checkpoint each, every
 * second). For each class of single fault, ROUNDS rounds: the fault, the
 * service back, the pair protected again by itself, a few quiet seconds. What
 * the client felt, from its own record of every answer:
 * - the longest time without an answer of the counter and of the echo in the
 *   round (its interruption), and the time from the fault to the first answer
 *   to a request sent after it;
 * - whether an application that waits 2 s for an echo would have given up;
 * - every re-protection's stop of the VM (its state file's record);
 * - with no fault at all, STEADY_S seconds of the same load: the counter's
 *   latency percentiles up to p99.9, side by side for colo-compare's
 *   settings (lockstep's compare_timeout 300 / expired_scan_cycle 100 ms
 *   against QEMU's defaults 3000 / 1000), alternating every minute on the
 *   running VM (qom-set on its compare object).
 * The counter checker runs on the whole record: no acknowledged write lost.
 * Written to bench/results/outage.json.
 *
 * LOCKSTEP_BENCH_OUTAGE_ROUNDS (5), LOCKSTEP_BENCH_STEADY_S (600),
 * LOCKSTEP_BENCH_OUTAGE_ONLY (fault ids, comma-separated; "none" for the steady state only).
 */
import fs from 'node:fs';
import path from 'node:path';
import { DaemonVmLab, LAB_GUEST_IPS } from '../src/lab/daemon-vm.js';
import { NetnsClient, counterGaps, roundInterruption, type ClientSummary } from '../src/lab/client-driver.js';
import { sleep } from '../src/util/time.js';
import { QmpClient } from '../src/qmp/client.js';
import { percentile, summarize, table, writeResult, type Summary } from './stats.js';
import { addHistograms, histogram, journalRecords, quantileBoundMs, scrapeMetrics, tail, type Histogram } from './lab-figures.js';
import type { JournalRecord } from '../src/daemon/api-types.js';

const ROUNDS = Number(process.env.LOCKSTEP_BENCH_OUTAGE_ROUNDS ?? 5);
const STEADY_S = Number(process.env.LOCKSTEP_BENCH_STEADY_S ?? 600);
const ONLY = process.env.LOCKSTEP_BENCH_OUTAGE_ONLY?.split(',').filter(Boolean);
/** An application that waits this long for an echo gives up its session. */
const ECHO_PATIENCE_MS = 2000;
const log = (m: string) => process.stderr.write(`• ${m}\n`);

if (process.getuid?.() !== 0) {
  log('outage benchmark skipped: it needs root (network and mount namespaces)');
  process.exit(0);
}

type Host = 'a' | 'b';
const other = (h: Host): Host => (h === 'a' ? 'b' : 'a');

interface Round {
  fault: string;
  at: number;
  until: number;
}

interface FaultClass {
  id: string;
  label: string;
  /** Injects the fault at the returned time, then brings whatever it took down back; returns when the service answers again. */
  inject(): Promise<number>;
}

const d = await DaemonVmLab.create('bench-outage', { onStep: log });
let client: NetnsClient | undefined;
const rounds: Round[] = [];
/** The steady state's windows, each with colo-compare's settings of its time. */
const steadyWindows: Array<{ settings: 'lockstep' | 'qemu'; from: number; until: number }> = [];
const COMPARE_SETTINGS = { lockstep: { compare_timeout: 300, expired_scan_cycle: 100 }, qemu: { compare_timeout: 3000, expired_scan_cycle: 1000 } } as const;
const resyncStops: number[] = [];
let record: ClientSummary | undefined;
/** Both hosts' journals, read at the end. */
const journal: JournalRecord[] = [];
/** When the VM was up (the daemons' metrics count from about then). */
let upAt = Date.now();
/** The daemons' heartbeat gaps and witness round trips, both hosts together. */
interface Timings {
  heartbeatGap: Histogram;
  witnessRoundTrip: Histogram;
}
/** Under the load, scraped before the first fault (since the daemons started). */
let timings: (Timings & { seconds: number }) | undefined;
/** The same at the end, from the daemons running then (a host that lost power starts its daemon, and its counts, afresh). */
let timingsAtEnd: Timings | undefined;
const scrapeTimings = async (): Promise<Timings> => {
  const scrapes = await Promise.all((['a', 'b'] as const).map((h) => scrapeMetrics(path.join(d.lab.dirs(h).run, 'api.sock'))));
  return {
    heartbeatGap: addHistograms(scrapes.map((x) => histogram(x, 'lockstep_heartbeat_gap_seconds'))),
    witnessRoundTrip: addHistograms(scrapes.map((x) => histogram(x, 'lockstep_witness_round_trip_seconds'))),
  };
};

const writer = async (): Promise<Host> => {
  const w = await d.writer();
  if (!w) throw new Error('no host runs the VM as its writer');
  return w;
};
const qemuPid = async (h: Host): Promise<number> => {
  const pid = (await d.status()).of(h)?.agent?.qemuPid;
  if (!pid) throw new Error(`host ${h} runs no QEMU of web`);
  return pid;
};
/** Until the client has an answer to a request it sent at or after `t`: the service is back for it. */
const answeredAfter = (t: number, what: string) => client!.until((x) => (x.lastAnswerSentAt ?? 0) >= t, 120_000, what);
const kill = (pid: number, signal: NodeJS.Signals) => {
  try {
    process.kill(pid, signal);
  } catch {
    /* gone already */
  }
};

const classes: FaultClass[] = [
  {
    id: 'kill-primary-qemu',
    label: "kill -9 of the primary's QEMU",
    async inject() {
      const pid = await qemuPid(await writer());
      const at = Date.now();
      kill(pid, 'SIGKILL');
      await answeredAfter(at, 'answers after the kill');
      return at;
    },
  },
  {
    id: 'freeze-primary-qemu',
    label: "primary's QEMU frozen (SIGSTOP)",
    async inject() {
      const pid = await qemuPid(await writer());
      const at = Date.now();
      kill(pid, 'SIGSTOP');
      await answeredAfter(at, 'answers after the freeze');
      kill(pid, 'SIGKILL'); // its agent's watchdog ended it; should it still be there, this fault's process is ended by us
      return at;
    },
  },
  {
    id: 'power-loss-primary',
    label: "primary's host loses power",
    async inject() {
      const p = await writer();
      const at = (await d.lab.powerLoss(d.hosts, p)).deadAt;
      await answeredAfter(at, 'answers after the power loss');
      await d.hosts.heal();
      await d.lab.startDaemon(p);
      return at;
    },
  },
  {
    id: 'isolate-primary',
    label: "primary's host isolated (every cable)",
    async inject() {
      const p = await writer();
      // From before the first cable goes: what the client felt is never counted short.
      const at = Date.now();
      await d.hosts.isolate(p);
      await answeredAfter(at, 'answers after the isolation');
      await d.hosts.heal();
      return at;
    },
  },
  {
    id: 'cut-replication',
    label: 'replication cable alone cut',
    async inject() {
      const p = await writer();
      const at = Date.now();
      await d.hosts.cut('replication');
      // The writer carries on alone (its stall bound), then the cable comes back.
      for (let i = 0; i < 120 && (await d.status()).of(p)?.agent?.role !== 'alone'; i++) await sleep(250);
      await answeredAfter(Date.now(), 'answers from the primary alone');
      await d.hosts.restore('replication');
      return at;
    },
  },
  {
    id: 'reboot-secondary',
    label: "secondary's host reboots",
    async inject() {
      const s = other(await writer());
      const at = Date.now();
      await d.lab.crash(s);
      await answeredAfter(at, 'answers after the reboot');
      await d.lab.startDaemon(s);
      return at;
    },
  },
  {
    id: 'power-loss-secondary',
    label: "secondary's host loses power",
    async inject() {
      const s = other(await writer());
      const at = (await d.lab.powerLoss(d.hosts, s)).deadAt;
      await answeredAfter(at, 'answers after the power loss');
      await sleep(2000);
      await d.hosts.heal();
      await d.lab.startDaemon(s);
      return at;
    },
  },
  {
    id: 'daemon-crash-primary',
    label: "primary host's daemon crashes (kill -9), back 2 s later",
    async inject() {
      const p = await writer();
      const pid = await d.lab.daemonPid(p);
      if (!pid) throw new Error(`host ${p} runs no daemon`);
      const at = Date.now();
      kill(pid, 'SIGKILL');
      await sleep(2000);
      await d.lab.startDaemon(p);
      await answeredAfter(at, 'answers after the daemon crash');
      return at;
    },
  },
  {
    id: 'kill-primary-then-survivor-daemon',
    label: "primary's QEMU killed, the survivor's daemon killed 0.3 s later and back 4 s after",
    async inject() {
      const p = await writer();
      const s = other(p);
      const pid = await qemuPid(p);
      const daemon = await d.lab.daemonPid(s);
      if (!daemon) throw new Error(`host ${s} runs no daemon`);
      const at = Date.now();
      kill(pid, 'SIGKILL');
      await sleep(300);
      kill(daemon, 'SIGKILL');
      await sleep(4000);
      await d.lab.startDaemon(s);
      await answeredAfter(at, 'answers after the survivor came back');
      return at;
    },
  },
];

/** colo-compare's settings on host h's running primary, through its second QMP monitor (the agent holds the first). */
async function setCompare(h: Host, props: { compare_timeout: number; expired_scan_cycle: number }): Promise<void> {
  const qmp = await QmpClient.connect(path.join(d.lab.dirs(h).state, 'vms', d.vm, h, 'qmp2.sock'), { timeoutMs: 5000 });
  try {
    for (const [property, value] of Object.entries(props)) await qmp.execute('qom-set', { path: '/objects/comp0', property, value });
  } finally {
    qmp.destroy();
  }
}

/** Re-protections recorded on the hosts since `t` (their state files): the VM's stop for the switch into COLO. */
function resyncStopsSince(t: number): number[] {
  const out: number[] = [];
  for (const h of ['a', 'b'] as const) {
    try {
      const st = JSON.parse(fs.readFileSync(path.join(d.lab.dirs(h).state, 'vms', d.vm, 'state.json'), 'utf8')) as { lastResync?: { at: string; stoppedMs: number } };
      if (st.lastResync && Date.parse(st.lastResync.at) >= t) out.push(st.lastResync.stoppedMs);
    } catch {
      /* no record on that host */
    }
  }
  return out;
}

try {
  log('up -f of web through the daemons of the lab hosts');
  await d.up();
  upAt = Date.now();
  client = NetnsClient.start(d.hosts.ns.client, LAB_GUEST_IPS.web!, 20, { httpTimeoutMs: 10_000, load: 'mixed' });
  await client.until((x) => x.httpOk >= 50 && x.echoOk >= 20, 240_000, 'traffic through COLO');
  if (STEADY_S > 0) {
    log(`steady state: ${STEADY_S} s of the mixed load, no fault, colo-compare's settings alternating every minute`);
    const p = await writer();
    const windows = Math.max(2, Math.round(STEADY_S / 60));
    for (let w = 0; w < windows; w++) {
      const settings = w % 2 === 0 ? 'qemu' : 'lockstep';
      await setCompare(p, COMPARE_SETTINGS[settings]);
      const from = Date.now();
      await sleep((STEADY_S * 1000) / windows);
      steadyWindows.push({ settings, from, until: Date.now() });
    }
    await setCompare(p, COMPARE_SETTINGS.lockstep);
  }
  timings = { ...(await scrapeTimings()), seconds: Math.round((Date.now() - upAt) / 1000) };
  for (const c of classes.filter((x) => !ONLY || ONLY.includes(x.id))) {
    for (let i = 1; i <= ROUNDS; i++) {
      await d.untilProtected(`before ${c.id} round ${i}`, 300_000);
      await sleep(3000);
      const at = await c.inject();
      const back = await d.untilProtected(`after ${c.id} round ${i}`, 300_000);
      await sleep(2000);
      rounds.push({ fault: c.id, at, until: Date.now() });
      const stops = resyncStopsSince(at);
      resyncStops.push(...stops);
      timingsAtEnd = await scrapeTimings().catch(() => timingsAtEnd);
      log(`${c.id} ${i}/${ROUNDS}: protected again ${(back.ms / 1000).toFixed(1)} s after the service was back${stops.length ? `; re-protection stopped the VM ${stops.map((s) => `${s.toFixed(0)} ms`).join(', ')}` : ''}`);
    }
  }
} finally {
  record = await client?.finish();
  for (const h of ['a', 'b'] as const) journal.push(...journalRecords(d.lab.dirs(h).state));
  await d.end();
  fs.rmSync(d.root, { recursive: true, force: true });
}

const rec = record!;
const lost = counterGaps(rec.http.requests);
const perClass = classes
  .filter((c) => rounds.some((r) => r.fault === c.id))
  .map((c) => {
    const mine = rounds.filter((r) => r.fault === c.id);
    const counter = mine.map((r) => roundInterruption(rec.http.answers, r.at, r.until));
    const echo = mine.map((r) => roundInterruption(rec.echo.answers, r.at, r.until));
    // An echo that waited longer than an application's patience, in the round: that application lost its session.
    const echoBroken = mine.filter((r) => rec.echo.answers.some(([sent, got]) => got >= r.at && got <= r.until && got - sent > ECHO_PATIENCE_MS)).length;
    return {
      id: c.id,
      label: c.label,
      rounds: mine.length,
      counterLongestGapMs: summarize(counter.map((x) => x.longestGapMs)),
      echoLongestGapMs: summarize(echo.map((x) => x.longestGapMs)),
      firstAnswerAfterFaultMs: summarize(counter.flatMap((x) => (x.firstAfterFaultMs === undefined ? [] : [x.firstAfterFaultMs]))),
      echoSessionsBrokenAt2s: echoBroken,
      timeline: timelineOf(mine),
    };
  });
/**
 * Where each round's time went, from the survivor's journal: the fault to its failover decision (detection), the
 * decision to its QMP procedure (the lease, the new epoch recorded), the procedure (to the VM carried on); and the
 * client's first answer to a request sent after the fault. Rounds whose journal records were not found are left out.
 */
function timelineOf(mine: Round[]) {
  const wall = (r: JournalRecord) => Date.parse(r.at);
  const rows = mine.flatMap((r) => {
    // The survivor's: an isolated primary decides a failover too (which its lease then refuses), sometimes first.
    const done = journal.find((x) => x.vm === 'web' && x.kind === 'failover' && wall(x) >= r.at && wall(x) <= r.until);
    const decision = done && journal.find((x) => x.vm === 'web' && x.host === done.host && x.kind === 'decision' && (x.figures.action === 'takeover' || x.figures.action === 'primary-failover') && wall(x) >= r.at && wall(x) <= wall(done));
    if (!decision || !done) return [];
    const toProcedureMs = typeof done.figures.toProcedureMs === 'number' ? done.figures.toProcedureMs : null;
    return [{ decidedMs: wall(decision) - r.at, carriedOnMs: wall(done) - r.at, toProcedureMs, procedureMs: toProcedureMs === null ? null : wall(done) - wall(decision) - toProcedureMs }];
  });
  const of = (xs: Array<number | null>) => summarize(xs.filter((x): x is number => x !== null));
  return { rounds: rows.length, decidedMs: of(rows.map((x) => x.decidedMs)), toProcedureMs: of(rows.map((x) => x.toProcedureMs)), procedureMs: of(rows.map((x) => x.procedureMs)), carriedOnMs: of(rows.map((x) => x.carriedOnMs)) };
}
/** The timings' figures for the result: how many, how many over each bound, and the bound below which 99.9 % fell. */
function timingFigures(t: Timings) {
  return {
    heartbeatGaps: t.heartbeatGap.count,
    heartbeatGapOverMs: tail(t.heartbeatGap),
    heartbeatGapP999BoundMs: quantileBoundMs(t.heartbeatGap, 0.999),
    witnessRoundTrips: t.witnessRoundTrip.count,
    witnessRoundTripOverMs: tail(t.witnessRoundTrip),
    witnessRoundTripP999BoundMs: quantileBoundMs(t.witnessRoundTrip, 0.999),
  };
}
function describeTimings(f: ReturnType<typeof timingFigures>): string {
  const over = (xs: Array<{ overMs: number; n: number }>, bounds: number[]) =>
    xs
      .filter((x) => bounds.includes(x.overMs))
      .map((x) => `${x.overMs} ms: ${x.n}`)
      .join(', ');
  return `${f.heartbeatGaps} heartbeat gaps, over ${over(f.heartbeatGapOverMs, [150, 200, 300, 500])}; ${f.witnessRoundTrips} witness round trips, over ${over(f.witnessRoundTripOverMs, [50, 100, 250])}`;
}
const latencyIn = (settings: 'lockstep' | 'qemu') =>
  rec.http.answers.filter(([sent]) => steadyWindows.some((w) => w.settings === settings && sent >= w.from && sent <= w.until)).map(([sent, got]) => got - sent);
const steadyOf = (settings: 'lockstep' | 'qemu') => {
  const l = latencyIn(settings);
  return { settings: COMPARE_SETTINGS[settings], seconds: Math.round(steadyWindows.filter((w) => w.settings === settings).reduce((n, w) => n + w.until - w.from, 0) / 1000), requests: l.length, p50Ms: percentile(l, 50), p99Ms: percentile(l, 99), p999Ms: percentile(l, 99.9), maxMs: Math.max(...l), overOneSecond: l.filter((x) => x > 1000).length };
};
const result = {
  when: new Date().toISOString(),
  roundsPerFault: ROUNDS,
  client: { counterEveryMs: 20, counterTimeoutMs: 10_000, echoPatienceMs: ECHO_PATIENCE_MS, load: 'counter read every 50 ms, a differing page every 1 s' },
  faults: perClass,
  resyncStopMs: summarize(resyncStops),
  steady: steadyWindows.length ? { lockstep: steadyOf('lockstep'), qemu: steadyOf('qemu') } : undefined,
  timings: timings && { seconds: timings.seconds, ...timingFigures(timings) },
  timingsAtEnd: timingsAtEnd && timingFigures(timingsAtEnd),
  acknowledgedWritesLost: lost ?? null,
  echoClosed: rec.echo.closed,
};
const file = writeResult('outage', result);
const ms = (s: Summary) => `${s.median.toFixed(0)} / ${s.p99.toFixed(0)} / ${s.max.toFixed(0)}`;
process.stdout.write(
  `\nWhat a client felt of each single fault (${ROUNDS} rounds each; daemons + witness, bridge mode; ms p50 / p99 / max)\n` +
    table([
      ['fault', 'counter: longest without an answer', 'echo: longest without an answer', 'first answer to a request sent after it', `echo sessions a ${ECHO_PATIENCE_MS / 1000} s timeout breaks`],
      ...perClass.map((f) => [f.label, ms(f.counterLongestGapMs), ms(f.echoLongestGapMs), ms(f.firstAnswerAfterFaultMs), `${f.echoSessionsBrokenAt2s} of ${f.rounds}`]),
    ]) +
    `\nWhere the time went (the survivor's journal; ms after the fault, p50 / p99 / max)\n` +
    table([
      ['fault', 'rounds', 'failover decided', 'decision → QMP procedure (lease, epoch)', 'QMP procedure', 'VM carried on', 'first answer (client)'],
      ...perClass.map((f) => [f.label, String(f.timeline.rounds), ms(f.timeline.decidedMs), ms(f.timeline.toProcedureMs), ms(f.timeline.procedureMs), ms(f.timeline.carriedOnMs), ms(f.firstAnswerAfterFaultMs)]),
    ]) +
    `\nre-protection: the VM stopped ${ms(result.resyncStopMs)} ms (${result.resyncStopMs.n} resyncs)\n` +
    (result.timings ? `\nUnder the load, before the first fault (${result.timings.seconds} s, both hosts): ${describeTimings(result.timings)}\n` : '') +
    (result.timingsAtEnd ? `At the end, the daemons running then (faults and resyncs included, since each started): ${describeTimings(result.timingsAtEnd)}\n` : '') +
    (result.steady
      ? `\nNo fault: the counter's latency under the load, colo-compare's settings alternating every minute on the same VM\n` +
        table([
          ['compare_timeout / expired_scan_cycle', 'seconds', 'requests', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'over 1 s'],
          ...(['lockstep', 'qemu'] as const).map((k) => {
            const x = result.steady![k];
            return [`${x.settings.compare_timeout} / ${x.settings.expired_scan_cycle} ms (${k === 'lockstep' ? "lockstep's" : "QEMU's defaults"})`, String(x.seconds), String(x.requests), x.p50Ms.toFixed(0), x.p99Ms.toFixed(0), x.p999Ms.toFixed(0), x.maxMs.toFixed(0), String(x.overOneSecond)];
          }),
        ]) +
        `\np99.9 QEMU's defaults / lockstep's: ×${(result.steady.qemu.p999Ms / result.steady.lockstep.p999Ms).toFixed(2)}\n`
      : '') +
    `acknowledged writes lost: ${lost ?? 'none'}; the echo session ${rec.echo.closed ? 'CLOSED' : 'stayed open'}\n` +
    `written to ${path.relative(process.cwd(), file)}\n`,
);
if (lost || rec.echo.closed) process.exitCode = 1;
