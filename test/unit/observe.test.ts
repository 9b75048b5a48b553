/**
 * What a daemon makes visible of its VMs, without VMs: the event journal
 * (durable, numbered without gaps, rotated within its bound, a torn line cut),
 * the records and counters the real agent core's steps give (a takeover of a
 * lost primary), the metrics (through `promtool check metrics`), the alert
 * rules (`promtool check rules` and `promtool test rules`), the merged live
 * view and its terminal rendering, the events' command-line formatting, and
 * the daemon's API and `lockstep dashboard`'s proxy around them.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { spawn, spawnSync } from 'node:child_process';
import { Journal } from '../../src/daemon/journal.js';
import { VmWatch, failoverReason, fenceReason, restartReason, witnessReachable, type VmCounters } from '../../src/daemon/observe.js';
import { DaemonMetrics } from '../../src/daemon/metrics.js';
import { liveView, mergeRecords } from '../../src/daemon/live-view.js';
import { renderWatch, sparkline } from '../../src/cli/watch.js';
import { formatRecord, parseSince } from '../../src/cli/observe.js';
import { initCore, step, statusOf } from '../../src/node/core/core.js';
import type { CoreConfig, CoreState, Effect, Input, InputBody } from '../../src/node/core/types.js';
import type { JournalDraft } from '../../src/daemon/journal.js';
import { hostInit } from '../../src/daemon/host-init.js';
import { loadHostFile } from '../../src/config/host.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { ApiClient } from '../../src/daemon/client.js';
import { startDashboardProxy, passes } from '../../src/daemon/dashboard-proxy.js';
import { packageRoot } from '../../src/util/paths.js';
import { metric, promtoolCheckMetrics } from '../helpers/metrics.js';
import { overview, vmOverview, pausesUntil, record } from '../helpers/synthetic.js';
import { lockstep } from '../helpers/cli.js';

const made: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-observe-test-'));
  made.push(d);
  return d;
};
after(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

// ---- the journal ----

test('journal: records numbered from 1, durable across a reopen, numbering continued; filters by VM, time, number and count', () => {
  const dir = tmp();
  let now = Date.parse('2025-06-01T03:00:00Z');
  const j = Journal.open({ dir, host: 'a', wallNow: () => now });
  const r1 = j.append({ vm: null, kind: 'daemon', reason: 'the daemon started' });
  now += 1000;
  j.append({ vm: 'web', kind: 'decision', reason: 'takeover: the primary reports its QEMU dead', figures: { action: 'takeover', skipped: undefined, nan: Number.NaN } });
  now += 1000;
  j.append({ vm: 'db', kind: 'protection', reason: 'protected', figures: { protected: true } });
  j.close();
  assert.equal(r1.seq, 1);
  assert.equal(r1.at, '2025-06-01T03:00:00.000Z');
  const again = Journal.open({ dir, host: 'a', wallNow: () => now });
  assert.equal(again.lastSeq, 3, 'the numbering is read back');
  assert.equal(again.append({ vm: 'web', kind: 'resync', reason: 'protected again' }).seq, 4, 'and continued');
  const all = again.read();
  assert.deepEqual(all.records.map((r) => r.seq), [1, 2, 3, 4]);
  assert.deepEqual(all.records[1]!.figures, { action: 'takeover', nan: null }, 'undefined figures left out, non-finite ones as null');
  assert.deepEqual(again.read({ vm: 'web' }).records.map((r) => r.seq), [1, 2, 4], "a VM's records and the host's own");
  assert.deepEqual(again.read({ sinceMs: Date.parse('2025-06-01T03:00:01Z') }).records.map((r) => r.seq), [2, 3, 4]);
  assert.deepEqual(again.read({ afterSeq: 2 }).records.map((r) => r.seq), [3, 4]);
  const limited = again.read({ limit: 2 });
  assert.deepEqual(limited.records.map((r) => r.seq), [3, 4], 'the newest');
  assert.equal(limited.truncated, true);
  assert.deepEqual(again.recent(2, 'db').map((r) => r.seq), [1, 3], "db's newest and the host's own");
  assert.equal(fs.statSync(path.join(dir, 'events.jsonl')).mode & 0o777, 0o600);
  assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
  again.close();
});

test('journal: a line cut short by a crash is cut off at open; records after it are whole', () => {
  const dir = tmp();
  const j = Journal.open({ dir, host: 'a' });
  j.append({ vm: 'web', kind: 'decision', reason: 'one' });
  j.append({ vm: 'web', kind: 'decision', reason: 'two' });
  j.close();
  const file = path.join(dir, 'events.jsonl');
  fs.appendFileSync(file, '{"seq":3,"at":"2025-06-01T03:00:0');
  const logged: string[] = [];
  const k = Journal.open({ dir, host: 'a', log: (_l, msg) => logged.push(msg) });
  assert.match(logged.join('\n'), /cut short/);
  assert.equal(k.append({ vm: 'web', kind: 'decision', reason: 'three' }).seq, 3);
  k.close();
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { seq: number });
  assert.deepEqual(lines.map((l) => l.seq), [1, 2, 3]);
});

test('journal: rotated within its bound (files × size) while flushes are under way; the newest records kept, numbered without a gap; no file left open', async () => {
  const dir = tmp();
  const maxFileBytes = 16 * 1024;
  /** This process's files open in the journal's directory. */
  const open = () =>
    fs.readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir);
      } catch {
        return false;
      }
    }).length;
  const j = Journal.open({ dir, host: 'a', maxFileBytes, files: 3 });
  for (let i = 0; i < 1000; i++) {
    j.append({ vm: 'web', kind: 'resync-step', reason: `step ${i} ${'x'.repeat(100)}` });
    // Some appends wait for the loop: flushes run between them, across rotations.
    if (i % 37 === 0) await new Promise((r) => setImmediate(r));
  }
  await j.flushed();
  assert.deepEqual(j.writeErrors, { count: 0, last: null });
  const names = fs.readdirSync(dir).sort();
  assert.deepEqual(names, ['events.jsonl', 'events.jsonl.1', 'events.jsonl.2'], 'three files at most');
  for (const n of names) assert.ok(fs.statSync(path.join(dir, n)).size <= maxFileBytes, `${n} within its bound`);
  assert.ok(j.bytes <= 3 * maxFileBytes);
  const all = j.read().records;
  assert.equal(all.at(-1)!.seq, 1000, 'the newest is there');
  assert.ok(all.length > 100 && all.length < 1000, `only the newest kept (${all.length})`);
  assert.deepEqual(all.map((r) => r.seq), all.map((_, i) => 1000 - all.length + 1 + i), 'contiguous');
  j.close();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(open(), 0, 'every file closed (a retired one once its flush ended)');
  assert.equal(Journal.open({ dir, host: 'a', maxFileBytes, files: 3 }).lastSeq, 1000, 'the number survives a reopen across rotated files');
});

// ---- the agent core's steps, watched ----

function coreConfig(o: Partial<CoreConfig> = {}): CoreConfig {
  return { name: 'b', peer: 'a', paths: 2, replicationPath: null, heartbeatIntervalMs: 100, heartbeatTimeoutMs: 500, witness: true, leaseMs: 1000, reprotect: true, stallMs: 5500, checkpointTimeoutMs: 12_500, hungMs: 3000, frozenMs: 1000, joinTimeoutMs: 60_000, diskSizeBytes: 64 << 20, ...o };
}

class Counted implements VmCounters {
  readonly calls: string[] = [];
  pauses: number[] = [];
  checkpoint(_vm: string, ms: number) {
    this.pauses.push(ms);
  }
  failover(vm: string, kind: string, reason: string, detectionMs: number | null) {
    this.calls.push(`failover ${vm} ${kind} ${reason} ${detectionMs !== null}`);
  }
  fence(vm: string, reason: string) {
    this.calls.push(`fence ${vm} ${reason}`);
  }
  restart(vm: string, reason: string) {
    this.calls.push(`restart ${vm} ${reason}`);
  }
  resync(vm: string, outcome: string) {
    this.calls.push(`resync ${vm} ${outcome}`);
  }
  decision(vm: string, action: string) {
    this.calls.push(`decision ${vm} ${action}`);
  }
  coloExit(vm: string, reason: string) {
    this.calls.push(`colo-exit ${vm} ${reason}`);
  }
  recordsDropped() {}
  gaps: number[] = [];
  heartbeatGap(_vm: string, ms: number) {
    this.gaps.push(ms);
  }
  witnessTrips: number[] = [];
  witnessRoundTrip(_vm: string, ms: number) {
    this.witnessTrips.push(ms);
  }
}

/**
 * Node b's core, a secondary of a's (disk 2/a), fed input by input at the time `now()` says and watched by `watch`,
 * beside a witness that grants, a disk that persists and a QEMU that answers; `answer` may answer other effects.
 */
function watchedSecondary(watch: VmWatch, cfg: CoreConfig, now: () => number, answer: (e: Effect, feed: (i: InputBody) => Effect[]) => void = () => {}) {
  let s: CoreState = initCore(cfg, 0, 'boot-b-00000000', { epoch: { run: 'r', gen: 2, by: 'a' }, pending: undefined });
  const feed = (i: InputBody): Effect[] => {
    const input = { ...i, now: now() } as Input;
    const t = step(s, input);
    s = t.state;
    watch.stepped(input, t.effects, () => statusOf(s));
    for (const e of t.effects) {
      if (e.t === 'ask-witness') feed({ t: 'witness-reply', reply: { t: 'lease', re: e.id, granted: true, holder: 'b', ttlMs: e.ttlMs, newest: e.next ?? e.disk } });
      if (e.t === 'persist-disk') feed({ t: 'disk-persisted', id: e.id, ok: true });
      if (e.t === 'query-qemu') feed({ t: 'qemu-answer', id: e.id });
      answer(e, feed);
    }
    return t.effects;
  };
  return { feed, state: () => s };
}

test('the core of a secondary whose primary vanishes, watched: each decision and the takeover in the journal, the counters moved, pauses measured', () => {
  const records: JournalDraft[] = [];
  const counters = new Counted();
  let wall = 1_000_000;
  const watch = new VmWatch({ vm: 'web', heartbeatTimeoutMs: () => 500, leaseMs: () => 1000, record: (d) => records.push(d), counters, wallNow: () => wall });
  let now = 0;
  let hbSeq = 0;
  let nextHbAt = 0;
  const core = watchedSecondary(watch, coreConfig(), () => now);
  const feed = core.feed;
  const tick = (ms: number, heartbeats: boolean) => {
    for (const end = now + ms; now < end; ) {
      now += 50;
      wall += 50;
      if (heartbeats && now >= nextHbAt) {
        nextHbAt = now + 100;
        for (const path of [0, 1]) feed({ t: 'peer-message', path, msg: { t: 'hb', boot: 'boot-a', seq: ++hbSeq, role: 'primary', qemu: 'alive', colo: 'ok', hearsPeer: true, disk: { run: 'r', gen: 2, by: 'a' }, checkpointAgeMs: 100, busy: null } });
      }
      feed({ t: 'tick' });
    }
  };
  const checkpoint = (pauseMs: number) => {
    feed({ t: 'qemu-event', event: 'STOP' });
    now += pauseMs;
    wall += pauseMs;
    feed({ t: 'qemu-event', event: 'RESUME' });
  };
  watch.agentStarted();
  feed({ t: 'qemu-found', found: { running: true, colo: 'secondary', runState: 'running', replicationChild: false, secondaryFilters: true, resumeLeftovers: false, oob: true } });
  for (let i = 0; i < 4; i++) {
    tick(1000, true);
    checkpoint(40 + 10 * i);
  }
  tick(500, true);
  assert.equal(statusOf(core.state()).protected, true);
  assert.deepEqual(counters.pauses, [40, 50, 60, 70], 'each checkpoint with its pause');
  assert.equal(watch.checkpoints, 4);
  assert.deepEqual(watch.pauseStats(), { count: 4, p50Ms: 50, p99Ms: 70, maxMs: 70 });
  const seenBefore = records.length;

  // The primary's host vanishes: no heartbeat, no checkpoint.
  tick(7000, false);
  const takeover = core.state().work;
  assert.equal(takeover?.kind, 'takeover');
  const run = takeover && 'procId' in takeover ? takeover.procId : null;
  assert.ok(run, 'the takeover procedure runs');
  feed({ t: 'proc-done', id: run });
  tick(200, false);
  const kinds = records.slice(seenBefore).map((r) => `${r.kind}${r.kind === 'decision' ? `:${r.figures?.action}` : ''}`);
  for (const k of ['heartbeat', 'decision:takeover', 'lease', 'failover', 'role']) assert.ok(kinds.includes(k), `${k} recorded (${kinds.join(', ')})`);
  assert.ok(kinds.indexOf('heartbeat') < kinds.indexOf('decision:takeover') && kinds.indexOf('decision:takeover') < kinds.indexOf('failover'), 'in the order they happened');
  const f = records.find((r) => r.kind === 'failover')!;
  assert.match(f.reason, /^took the VM over from a: no heartbeat and no checkpoint for \d+ ms: the primary is unreachable$/);
  assert.equal(f.figures?.label, 'peer-unreachable');
  assert.equal(typeof f.figures?.detectionMs, 'number');
  assert.ok(counters.calls.includes('failover web takeover peer-unreachable true'), counters.calls.join('; '));
  assert.ok(records.some((r) => r.kind === 'protection' && r.figures?.protected === false), 'protection lost, recorded');
  assert.equal(records.filter((r) => r.kind === 'heartbeat').length, 2, 'each path silent, once');
});

test('reasons as labels: the core\'s words for failovers, fences and restarts map to a few bounded labels', () => {
  assert.equal(failoverReason('the primary reports its QEMU dead'), 'peer-qemu-dead');
  assert.equal(failoverReason('COLO_EXIT and no heartbeat from the primary'), 'colo-exit');
  assert.equal(failoverReason('COLO_EXIT: the checkpoint stream to the secondary broke'), 'colo-exit');
  assert.equal(failoverReason('no heartbeat and no checkpoint for 5512 ms: the primary is unreachable'), 'peer-unreachable');
  assert.equal(failoverReason("no heartbeat, and the secondary's QEMU does not answer"), 'peer-unreachable');
  assert.equal(failoverReason("no heartbeat, and the primary's host answers nothing (gone or cut off): the primary is unreachable"), 'peer-unreachable');
  assert.equal(failoverReason('replication stalled: no checkpoint for 5600 ms'), 'replication-stalled');
  assert.equal(failoverReason('the primary fenced itself'), 'peer-fenced');
  assert.equal(failoverReason('something new'), 'other');
  assert.equal(fenceReason('takeover impossible (no lease within 2500 ms): stopping our VM so that it cannot be a second writer'), 'failover-impossible');
  assert.equal(fenceReason('the witness knows a newer disk than ours'), 'stale-disk');
  assert.equal(fenceReason("b's disk (r/3/b) is newer than ours (r/2/a): we may only be resynced"), 'peer-disk-newer');
  assert.equal(fenceReason('the lease ran out and the secondary cannot vouch for us'), 'lease-lost');
  assert.equal(fenceReason('b runs the VM alone: ours must not write'), 'peer-runs-vm');
  assert.equal(fenceReason('COLO_EXIT while the primary lives: the replication link broke; waiting to be resynced'), 'replication-broke');
  assert.equal(restartReason('our QEMU is gone and the peer has been silent for 9000 ms: restarting from our disk if the witness agrees'), 'peer-silent');
  assert.equal(restartReason('no VM runs on either node, and our disk is the newest (r/3/a, b\'s r/2/a)'), 'newest-disk');
  assert.equal(restartReason("b's VM is stopped and our disk is newer (r/3/a > r/2/a)"), 'peer-stopped');
  assert.equal(restartReason("no VM runs, and b has not restarted it in 9000 ms: the witness decides"), 'witness-decides');
});

test('the witness answers a node without the lease every 2 × leaseMs: an answer a little late is no outage (the core says unreachable for that moment)', () => {
  const lease = (witnessAnswerMs: number | null, held = false) => ({ witness: true, held, remainingMs: held ? 500 : null, witnessAnswerMs, lastRefusal: null, stale: false });
  const late = { lease: lease(2034), degraded: ['witness unreachable for 2034 ms'] };
  assert.equal(witnessReachable(late, 1000), true, 'seen in the lab every 2-4 s: not an outage');
  assert.equal(witnessReachable({ lease: lease(3100), degraded: ['witness unreachable for 3100 ms'] }, 1000), false);
  assert.equal(witnessReachable({ lease: lease(null), degraded: ['witness unreachable'] }, 1000), false, 'never answered: the core decides');
  assert.equal(witnessReachable({ lease: lease(null), degraded: [] }, 1000), true, 'just started');
  assert.equal(witnessReachable({ lease: lease(9000, true), degraded: [] }, 1000), true, 'the holder renews: it answers');
  assert.equal(witnessReachable({ lease: { ...lease(0), witness: false }, degraded: [] }, 1000), null);
});

// ---- metrics ----

test('metrics: lockstep_* in Prometheus\' conventions, from the VMs\' status and the counters; promtool check metrics passes', async () => {
  const now = Date.now();
  const st = vmOverview('b', 'web', { role: 'alone', protected: false, peer: 'a', lease: true, work: { kind: 'reprotect', phase: 'resuming', why: 'x', runningMs: 2000, step: 'mirroring our disk', mirror: { offset: 16 << 20, len: 64 << 20 } } }, {});
  const m = new DaemonMetrics({
    host: 'b',
    version: '0.1.0',
    startedAtMs: now - 60_000,
    healthProblems: () => [],
    vms: () => [{ status: st, heartbeatTimeoutMs: 500, leaseMs: 1000 }],
    sessions: () => [{ peer: 'a', path: '10.10.2.2>10.10.2.1', up: true, vms: ['web'] }],
    journal: () => ({ bytes: 1234, records: 10, writeErrors: 0 }),
    dashboardClients: () => 2,
  });
  m.initVm('web');
  m.checkpoint('web', 66);
  m.checkpoint('web', 120);
  m.failover('web', 'takeover', 'peer-unreachable', 5512, 310);
  m.resync('web', 'failed', null);
  m.resync('web', 'done', 2300);
  m.decision('web', 'takeover');
  m.coloExit('web', 'error');
  m.operatorCommand('resync', 202);
  const { body, contentType } = await m.text();
  assert.match(contentType, /^text\/plain; version=0\.0\.4/);
  const lint = promtoolCheckMetrics(body);
  assert.equal(lint.code, 0, lint.out);
  assert.equal(metric(body, 'lockstep_checkpoints_total', { vm: 'web' }), 2);
  assert.equal(metric(body, 'lockstep_checkpoint_pause_seconds_bucket', { vm: 'web', le: '0.075' }), 1);
  assert.equal(metric(body, 'lockstep_checkpoint_pause_seconds_count', { vm: 'web' }), 2);
  assert.equal(metric(body, 'lockstep_failovers_total', { vm: 'web', kind: 'takeover', reason: 'peer-unreachable' }), 1);
  assert.equal(metric(body, 'lockstep_failovers_total', { vm: 'web', kind: 'primary-failover', reason: 'colo-exit' }), 0, 'every failover series exists from the start');
  assert.equal(metric(body, 'lockstep_resyncs_total', { vm: 'web', outcome: 'failed' }), 1);
  assert.equal(metric(body, 'lockstep_resync_duration_seconds_sum', { vm: 'web' }), 2.3);
  assert.equal(metric(body, 'lockstep_vm_protected', { vm: 'web' }), 0);
  assert.equal(metric(body, 'lockstep_vm_role', { vm: 'web', role: 'alone' }), 1);
  assert.equal(metric(body, 'lockstep_vm_role', { vm: 'web', role: 'primary' }), 0);
  assert.equal(metric(body, 'lockstep_resync_in_progress', { vm: 'web' }), 1);
  assert.equal(metric(body, 'lockstep_resync_progress_ratio', { vm: 'web' }), 0.25);
  assert.equal(metric(body, 'lockstep_lease_held', { vm: 'web' }), 1);
  assert.equal(metric(body, 'lockstep_lease_remaining_seconds', { vm: 'web' }), 0.78);
  assert.equal(metric(body, 'lockstep_heartbeat_path_up', { vm: 'web', path: '2' }), 1);
  assert.equal(metric(body, 'lockstep_heartbeat_last_seen_seconds', { vm: 'web', path: '1' }), 0.041);
  assert.equal(metric(body, 'lockstep_disk_epoch', { vm: 'web' }), 3);
  assert.equal(metric(body, 'lockstep_witness_reachable', { vm: 'web' }), 1);
  assert.equal(metric(body, 'lockstep_heartbeat_session_up', { peer: 'a' }), 1);
  assert.equal(metric(body, 'lockstep_host_info', { host: 'b', version: '0.1.0' }), 1);
  assert.equal(metric(body, 'lockstep_daemon_healthy'), 1);
  assert.equal(metric(body, 'lockstep_dashboard_clients'), 2);
  assert.equal(metric(body, 'lockstep_operator_commands_total', { command: 'resync', code: '202' }), 1);
  assert.equal(metric(body, 'lockstep_journal_records_total'), 10);
  assert.equal(metric(body, 'lockstep_journal_write_errors_total'), 0);
  assert.ok(metric(body, 'process_cpu_seconds_total') !== undefined, "the process's own");
  for (const line of body.split('\n').filter((l) => l.startsWith('# TYPE lockstep_'))) {
    const [, , name, type] = line.split(' ');
    if (type === 'counter') assert.match(name!, /_total$/, `${name}: a counter ends in _total`);
    else assert.doesNotMatch(name!, /_total$/, `${name}: only counters end in _total`);
  }
});

test('alert rules: promtool check rules, and promtool test rules (each alert fires when it should, and only then)', () => {
  const root = packageRoot();
  const check = spawnSync('promtool', ['check', 'rules', path.join(root, 'packaging', 'lockstep-alerts.yml')], { encoding: 'utf8' });
  assert.ifError(check.error);
  assert.equal(check.status, 0, `${check.stdout}${check.stderr}`);
  assert.match(check.stdout, /SUCCESS: 8 rules found/);
  const t = spawnSync('promtool', ['test', 'rules', 'lockstep-alerts.test.yml'], { encoding: 'utf8', cwd: path.join(root, 'test', 'unit') });
  assert.equal(t.status, 0, `${t.stdout}${t.stderr}`);
});

// ---- the live view ----

test('live view: protected only when both hosts answer and say so; a host not answering says why, first; events merged in time order', () => {
  const now = Date.parse('2025-06-01T03:00:00Z');
  const evA = [record('a', 1, now - 5000, 'decision', 'a one'), record('a', 2, now - 1000, 'protection', 'a two')];
  const evB = [record('b', 7, now - 3000, 'heartbeat', 'b one'), record('b', 8, now - 1000, 'resync', 'b two')];
  const a = overview('a', now, [vmOverview('a', 'web', { role: 'primary', protected: true, peer: 'b', lease: true }, { pauses: pausesUntil(now) })], evA);
  const b = overview('b', now, [vmOverview('b', 'web', { role: 'secondary', protected: true, peer: 'a' })], evB);
  const both = liveView('b', [{ host: 'b', overview: b, error: null, ageMs: 0 }, { host: 'a', overview: a, error: null, ageMs: 300 }], now);
  assert.equal(both.vms[0]!.protected, true);
  assert.equal(both.vms[0]!.state, 'protected');
  assert.deepEqual(both.vms[0]!.parts.map((p) => p.host), ['a', 'b'], "in the VM's host order");
  assert.deepEqual(both.vms[0]!.events.map((r) => `${r.host}${r.seq}`), ['a1', 'b7', 'a2', 'b8'], 'time, then host');
  const lost = liveView('b', [{ host: 'b', overview: b, error: null, ageMs: 0 }, { host: 'a', overview: a, error: 'no answer within 1000 ms', ageMs: 1700 }], now);
  assert.equal(lost.vms[0]!.protected, false);
  assert.equal(lost.vms[0]!.parts[0]!.reachable, false);
  assert.match(lost.vms[0]!.why[0]!, /^host a cannot be asked \(no answer for 1\.7 s: no answer within 1000 ms\)$/);
  const stale = liveView('b', [{ host: 'b', overview: b, error: null, ageMs: 0 }, { host: 'a', overview: a, error: null, ageMs: 1600 }], now);
  assert.equal(stale.vms[0]!.protected, false, 'an answer older than 1.5 s does not count');
  assert.deepEqual(mergeRecords([evA, [...evA, ...evB]]).map((r) => r.seq), [1, 7, 2, 8], 'without repeats');
  const text = renderWatch(lost, { width: 120, color: false });
  assert.match(text, /web +● NOT PROTECTED/);
  assert.match(text, /! host a cannot be asked/);
  assert.match(text, /a +NOT ANSWERING/);
  assert.match(text, /b +secondary +protected/);
  assert.doesNotMatch(text, /\x1b\[/, 'no color codes unless asked');
  assert.match(renderWatch(both, { width: 120, color: true }), /\x1b\[32m● PROTECTED/);
  assert.equal(sparkline([1, 2, 4, 8], 10), '▁▂▄█');
});

test('lockstep events: --since as a time or a duration; one line per record with what tells most', () => {
  const now = Date.parse('2025-06-01T03:00:00Z');
  assert.equal(parseSince('10m', now), now - 600_000);
  assert.equal(parseSince('1.5h', now), now - 5_400_000);
  assert.equal(parseSince('2025-06-01T02:00:00Z', now), now - 3_600_000);
  assert.throws(() => parseSince('yesterday', now), /neither a time nor a duration/);
  const line = formatRecord(record('b', 4, now, 'failover', 'took the VM over from a: no heartbeat', 'web', { detectionMs: 5512, procedureMs: 310 }));
  assert.equal(line, '2025-06-01T03:00:00.000Z  b      web      failover    took the VM over from a: no heartbeat (decided 5.51 s after the last checkpoint, then the procedure took 0.31 s)');
});

// ---- the daemon's API and the dashboard's proxy, on a daemon without VMs ----

async function daemon(): Promise<{ d: Daemon; c: ApiClient; file: string }> {
  const dir = tmp();
  const file = path.join(dir, 'host.yaml');
  await hostInit({ file, name: 'a', replication: '127.0.0.1', stateDir: path.join(dir, 'state'), socket: path.join(dir, 'api.sock') });
  const d = new Daemon(loadHostFile(file));
  await d.start();
  return { d, c: ApiClient.local(loadHostFile(file)), file };
}

test('daemon: GET /metrics and /v1/events on the API; an operator\'s command journaled, refused or not; the journal survives a restart', async () => {
  const { d, c, file } = await daemon();
  try {
    const m = await c.stream('/metrics');
    let text = '';
    for await (const x of m.res) text += String(x);
    assert.equal(metric(text, 'lockstep_daemon_healthy'), 1);
    await assert.rejects(c.stopVm('nosuch'), /no VM "nosuch"/);
    const ev = await c.events();
    assert.deepEqual(ev.records.map((r) => r.kind), ['daemon', 'operator', 'operator']);
    assert.equal(ev.records[1]!.reason, 'stop nosuch, asked by root on this host', 'the command as it came, before it acted');
    assert.equal(ev.records[2]!.reason, 'stop nosuch refused: no VM "nosuch" on this host');
    assert.equal(ev.records[2]!.figures.status, 404);
    await assert.rejects(c.events({ vm: 'web', afterSeq: -1 }), /afterSeq must be a whole number/);
  } finally {
    await d.stop();
  }
  const again = new Daemon(loadHostFile(file));
  await again.start();
  try {
    const ev = await ApiClient.local(loadHostFile(file)).events();
    assert.deepEqual(ev.records.map((r) => `${r.seq} ${r.kind}`), ['1 daemon', '2 operator', '3 operator', '4 daemon', '5 daemon'], 'stopped, started: every record kept, numbered on');
    assert.match(ev.records[3]!.reason, /the daemon stops/);
  } finally {
    await again.stop();
  }
});

function get(port: number, p: string, o: { host?: string; cookie?: string; method?: string } = {}): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, method: o.method ?? 'GET', headers: { host: o.host ?? `127.0.0.1:${port}`, ...(o.cookie ? { cookie: o.cookie } : {}) } }, (res) => {
      let body = '';
      res.on('data', (x) => (body += String(x)));
      // The live stream does not end: its first frame is enough.
      res.on('data', () => {
        if (p.includes('stream') && body.includes('\n\n')) {
          resolve({ status: res.statusCode ?? 0, body, headers: res.headers });
          req.destroy();
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('lockstep dashboard\'s port: only with the printed URL\'s token, only as 127.0.0.1:PORT, only to read', async () => {
  const { d, c } = await daemon();
  const proxy = await startDashboardProxy(c, { port: 0 });
  try {
    const port = proxy.port;
    assert.match(proxy.url, new RegExp(`^http://127\\.0\\.0\\.1:${port}/\\?token=[A-Za-z0-9_-]{32}$`));
    assert.equal((await get(port, '/dashboard/')).status, 403, 'no token: refused');
    assert.equal((await get(port, '/?token=wrong')).status, 403);
    const login = await get(port, new URL(proxy.url).pathname + new URL(proxy.url).search);
    assert.equal(login.status, 303);
    assert.equal(login.headers.location, '/dashboard/');
    const cookie = String(login.headers['set-cookie']).split(';')[0]!;
    assert.match(String(login.headers['set-cookie']), /HttpOnly; SameSite=Strict/);
    const page = await get(port, '/dashboard/', { cookie });
    assert.equal(page.status, 200);
    assert.match(page.body, /<title>lockstep<\/title>/);
    assert.match(String(page.headers['content-security-policy']), /default-src 'none'; script-src 'self'/);
    assert.equal((await get(port, '/dashboard/', { cookie, host: `evil.example:${port}` })).status, 403, 'another Host (DNS rebinding): refused');
    assert.equal((await get(port, '/v1/vms/web/stop', { cookie, method: 'POST' })).status, 405, 'no command passes');
    assert.equal((await get(port, '/v1/vms/web', { cookie, method: 'PUT' })).status, 405);
    assert.equal((await get(port, '/dashboard/../../etc/passwd', { cookie })).status, 405);
    assert.equal((await get(port, '/v1/host', { cookie })).status, 200);
    const stream = await get(port, '/v1/overview/stream', { cookie });
    assert.equal(stream.status, 200);
    assert.match(String(stream.headers['content-type']), /text\/event-stream/);
    assert.match(stream.body, /^event: view\ndata: \{"by":"a"/);
    assert.equal(passes('GET', '/metrics'), true);
    assert.equal(passes('DELETE', '/v1/host'), false);
  } finally {
    await proxy.close();
    await d.stop();
  }
});

test('lockstep events --follow prints records as they come, until Ctrl-C (exit 0); status --watch --count --json: one view per line', async () => {
  const { d, c, file } = await daemon();
  try {
    const child = spawn(process.execPath, [path.join(packageRoot(), 'bin', 'lockstep.js'), 'events', '--follow', '--json', '--host-file', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (x: Buffer) => (out += x.toString()));
    const lines = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { seq: number; kind: string; reason: string });
    const until = async (pred: () => boolean, what: string) => {
      for (let i = 0; i < 100 && !pred(); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(pred(), what);
    };
    await until(() => lines().length >= 1, 'the records there are, first');
    await assert.rejects(c.resync('web'), /no VM "web"/);
    await until(() => lines().some((r) => r.kind === 'operator' && /^resync web refused: no VM "web"/.test(r.reason)), 'new records, followed');
    const code = new Promise<number | null>((resolve) => child.once('close', resolve));
    child.kill('SIGINT');
    assert.equal(await code, 0, 'Ctrl-C ends it, exit 0');
    assert.deepEqual(lines().map((r) => r.seq), [1, 2, 3], 'each record once, in order');
    const w = await lockstep(['status', '--watch', '--count', '2', '--interval', '0.2', '--json', '--host-file', file]);
    assert.equal(w.code, 0, w.stderr);
    const views = w.stdout.trim().split('\n').map((l) => JSON.parse(l) as { by: string; hosts: Array<{ host: string; reachable: boolean; version: string }> });
    assert.equal(views.length, 2);
    assert.deepEqual(views[1]!.hosts, [{ host: 'a', reachable: true, problem: null, version: views[1]!.hosts[0]!.version, healthy: true, healthProblems: [] }]);
  } finally {
    await d.stop();
  }
});

test('the gaps between heartbeats and the witness\'s round trips are measured where the agent runs (the timings\' evidence)', () => {
  const counters = new Counted();
  const watch = new VmWatch({ vm: 'web', heartbeatTimeoutMs: () => 500, leaseMs: () => 1000, record: () => {}, counters });
  let s: CoreState = initCore(coreConfig(), 0, 'boot-b-00000000', { epoch: { run: 'r', gen: 2, by: 'a' }, pending: undefined });
  const feed = (now: number, i: InputBody): Effect[] => {
    const input = { ...i, now } as Input;
    const t = step(s, input);
    s = t.state;
    watch.stepped(input, t.effects, () => statusOf(s));
    return t.effects;
  };
  feed(0, { t: 'qemu-found', found: { running: true, colo: 'secondary', runState: 'running', replicationChild: false, secondaryFilters: true, resumeLeftovers: false, oob: true } });
  let seq = 0;
  const hb = (now: number) => feed(now, { t: 'peer-message', path: 0, msg: { t: 'hb', seq: ++seq, boot: 'boot-a', role: 'primary', qemu: 'alive', colo: 'ok', hearsPeer: true, disk: { run: 'r', gen: 2, by: 'a' }, checkpointAgeMs: 100, busy: null } });
  for (const at of [100, 200, 300, 620, 720]) hb(at);
  assert.deepEqual(counters.gaps, [100, 100, 320, 100]);
  // The witness: asked at a tick, answered 40 ms later.
  let asked: Extract<Effect, { t: 'query-witness' | 'ask-witness' }> | undefined;
  for (let now = 750; now < 4000 && !asked; now += 50) asked = feed(now, { t: 'tick' }).find((e): e is Extract<Effect, { t: 'query-witness' | 'ask-witness' }> => e.t === 'query-witness' || e.t === 'ask-witness');
  assert.ok(asked, 'the secondary asks the witness how things stand');
  const askedAt = s.now;
  feed(askedAt + 40, { t: 'witness-reply', reply: { t: 'state', re: asked.id, holder: 'a', remainingMs: 900, newest: { run: 'r', gen: 2, by: 'a' } } });
  assert.deepEqual(counters.witnessTrips, [40]);
});

for (const probe of ['answered ahead of the timeout', 'answered as its own input just after the timeout'] as const) test(`a takeover decided as its primary falls silent (the host probe ${probe}) is journaled after the silence that led to it`, () => {
  const late = probe !== 'answered ahead of the timeout';
  const records: JournalDraft[] = [];
  let probeOut: string | null = null;
  const watch = new VmWatch({ vm: 'web', heartbeatTimeoutMs: () => 500, leaseMs: () => 1000, record: (d) => records.push(d), counters: new Counted() });
  let now = 0;
  let seq = 0;
  const core = watchedSecondary(watch, coreConfig({ paths: 1 }), () => now, (e, feed) => {
    // The primary's host is gone: the probe's connect gets no answer (at once here, within its bound in life).
    if (e.t !== 'probe-peer') return;
    if (late) probeOut = e.id;
    else feed({ t: 'probe-result', id: e.id, alive: false });
  });
  const feed = core.feed;
  watch.agentStarted();
  feed({ t: 'qemu-found', found: { running: true, colo: 'secondary', runState: 'running', replicationChild: false, secondaryFilters: true, resumeLeftovers: false, oob: true } });
  for (; now < 1500; now += 50) {
    if (now % 100 === 0) feed({ t: 'peer-message', path: 0, msg: { t: 'hb', boot: 'boot-a', seq: ++seq, role: 'primary', qemu: 'alive', colo: 'ok', hearsPeer: true, replicaExact: true, disk: { run: 'r', gen: 2, by: 'a' }, checkpointAgeMs: 100, busy: null } });
    if (now === 1000) {
      feed({ t: 'qemu-event', event: 'STOP' });
      feed({ t: 'qemu-event', event: 'RESUME' });
    }
    feed({ t: 'tick' });
  }
  // The last heartbeat between two ticks (20 ms after one), so that the timeout runs out between ticks too.
  now = 1520;
  feed({ t: 'peer-message', path: 0, msg: { t: 'hb', boot: 'boot-a', seq: ++seq, role: 'primary', qemu: 'alive', colo: 'ok', hearsPeer: true, replicaExact: true, disk: { run: 'r', gen: 2, by: 'a' }, checkpointAgeMs: 100, busy: null } });
  const from = records.length;
  for (now = 1550; now < 2600 && core.state().work?.kind !== 'takeover'; now += 50) {
    feed({ t: 'tick' });
    // The probe's answer between two ticks: after the tick at which the primary was still heard (480 ms), just past
    // the timeout (505 ms), before the next tick (the observe test's power loss in CI: the takeover was decided on it,
    // and the journal said so before the silence, which it compared at ticks only).
    if (probeOut !== null && now === 2000) {
      const id = probeOut;
      probeOut = null;
      now = 2025;
      feed({ t: 'probe-result', id, alive: false });
    }
  }
  const kinds = records.slice(from).map((r) => `${r.kind}${r.kind === 'decision' ? `:${r.figures?.action}` : ''}`);
  assert.ok(kinds.includes('decision:takeover'), `a takeover (${kinds.join(', ')})`);
  assert.ok(kinds.indexOf('heartbeat') >= 0 && kinds.indexOf('heartbeat') < kinds.indexOf('decision:takeover'), `the silence first, then the takeover (${kinds.join(', ')})`);
});
