/**
 * The agent core, driven input by input: each test is a sequence of events
 * that once ended badly (the list, and what the simulator found),
 * and what the core must decide instead.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initCore, step, statusOf, isProtected, probeSilenceMs, InvariantError, WATCHDOG_INTERVAL_MS, CLOCK_DRIFT_MAX } from '../../src/node/core/core.js';
import { PROBE_TIMEOUT_MS, type CoreConfig, type CoreState, type Effect, type InputBody, type QemuFound, type ReplicaNote } from '../../src/node/core/types.js';
import { peerMessageSchema, type Heartbeat, type LeaseReply } from '../../src/node/wire.js';
import { Rng } from '../../src/sim/rng.js';
import type { Epoch } from '../../src/pair/epoch.js';

const E = (gen: number, by = 'up'): Epoch => ({ run: 'r1', gen, by });

function config(o: Partial<CoreConfig> = {}): CoreConfig {
  return {
    name: 'a',
    peer: 'b',
    paths: 1,
    replicationPath: null,
    heartbeatIntervalMs: 100,
    heartbeatTimeoutMs: 500,
    witness: true,
    leaseMs: 1000,
    reprotect: true,
    stallMs: 5500,
    checkpointTimeoutMs: 12_500,
    hungMs: 3000,
    frozenMs: 1000,
    joinTimeoutMs: 60_000,
    diskSizeBytes: 64 << 20,
    ...o,
  };
}

const running: QemuFound = { running: true, colo: 'none', runState: 'running', replicationChild: false, secondaryFilters: false, resumeLeftovers: false, oob: true };

/** Feeds one node's core and keeps what it asked for. */
class Node {
  s: CoreState;
  now = 0;
  fx: Effect[] = [];
  private peerSeq = 0;
  /** The peer's heartbeat as we make it say things. */
  peer: Omit<Heartbeat, 't' | 'seq'> = { boot: 'boot-b', role: 'secondary', qemu: 'alive', colo: 'ok', hearsPeer: true, disk: E(1), checkpointAgeMs: 100, busy: null };

  constructor(o: Partial<CoreConfig> = {}, disk: { epoch?: Epoch; pending?: Epoch; note?: ReplicaNote } = { epoch: E(1) }) {
    this.s = initCore(config(o), 0, 'boot-a-000000000', { epoch: disk.epoch, pending: disk.pending, ...(disk.note ? { note: disk.note } : {}) });
  }

  in(i: InputBody): Effect[] {
    const t = step(this.s, { ...i, now: this.now } as Parameters<typeof step>[1]);
    this.s = t.state;
    this.fx.push(...t.effects);
    return t.effects;
  }

  /** Lets `ms` pass in ticks; the peer's heartbeat arrives every 100 ms if `heartbeats`, and every request is answered by `answer`. */
  run(ms: number, o: { heartbeats?: boolean; paths?: number[]; acks?: number[]; checkpointEveryMs?: number; answer?: (e: Effect) => InputBody | undefined } = {}): void {
    const end = this.now + ms;
    let nextHb = this.now;
    let nextCheckpoint = this.now + (o.checkpointEveryMs ?? Infinity);
    while (this.now < end) {
      this.now = Math.min(end, this.now + 50);
      const before = this.fx.length;
      if (o.heartbeats && this.now >= nextHb) {
        // The same heartbeat on each path (o.paths: which ones; path 0 alone by default).
        this.heartbeat({}, o.paths ?? [0]);
        nextHb = this.now + 100;
      }
      if (this.now >= nextCheckpoint) {
        this.checkpoint();
        nextCheckpoint = this.now + o.checkpointEveryMs!;
      }
      this.in({ t: 'tick' });
      if (o.answer) for (const e of this.fx.slice(before)) this.answer(e, o.answer);
      // The peer acks each of our heartbeats on the path it came by (o.acks: the paths where ours arrive).
      for (const e of this.fx.slice(before)) {
        if (e.t !== 'send-peer' || e.msg.t !== 'hb') continue;
        for (const path of o.acks ?? []) this.in({ t: 'peer-message', path, msg: { t: 'hback', seq: e.msg.seq } });
      }
    }
  }

  private answer(e: Effect, answer: (e: Effect) => InputBody | undefined): void {
    const reply = answer(e);
    if (!reply) return;
    const before = this.fx.length;
    this.in(reply);
    for (const x of this.fx.slice(before)) this.answer(x, answer);
  }

  heartbeat(o: Partial<Heartbeat> = {}, paths: number[] = [0]): void {
    const msg = { t: 'hb' as const, seq: ++this.peerSeq, ...this.peer, ...o };
    for (const path of paths) this.in({ t: 'peer-message', path, msg });
  }

  found(f: Partial<QemuFound>): void {
    this.in({ t: 'qemu-found', found: { ...running, ...f } });
  }

  /** One checkpoint: STOP then RESUME. */
  checkpoint(): void {
    this.in({ t: 'qemu-event', event: 'STOP' });
    this.in({ t: 'qemu-event', event: 'RESUME' });
  }

  decisions(): string[] {
    return this.fx.flatMap((e) => (e.t === 'decision' ? [e.action] : []));
  }

  runs(): Array<Extract<Effect, { t: 'run' }>> {
    return this.fx.filter((e): e is Extract<Effect, { t: 'run' }> => e.t === 'run');
  }

  last<T extends Effect['t']>(t: T): Extract<Effect, { t: T }> | undefined {
    return this.fx.filter((e): e is Extract<Effect, { t: T }> => e.t === t).at(-1);
  }
}

/** A witness that grants every lease and records every new epoch (as the real one would, unless refused). */
function grantAll(n: Node, o: { newest?: () => Epoch | null } = {}): (e: Effect) => InputBody | undefined {
  return (e) => {
    if (e.t === 'ask-witness') {
      const reply: LeaseReply = { t: 'lease', re: e.id, granted: true, holder: n.s.cfg.name, ttlMs: e.ttlMs, newest: o.newest?.() ?? e.next ?? e.disk };
      return { t: 'witness-reply', reply };
    }
    if (e.t === 'persist-disk') return { t: 'disk-persisted', id: e.id, ok: true };
    if (e.t === 'query-qemu') return { t: 'qemu-answer', id: e.id };
    return undefined;
  };
}

/** Node a, a protected primary that hears b on two heartbeat paths, the second over the replication network. */
function protectedPrimaryOnTwoPaths(replicationPath: number | null, acks: number[] = []): Node {
  const a = new Node({ paths: 2, replicationPath });
  a.found({ colo: 'primary' });
  a.run(1000, { heartbeats: true, paths: [0, 1], acks, answer: grantAll(a) });
  a.checkpoint();
  a.run(100, { heartbeats: true, paths: [0, 1], acks, answer: grantAll(a) });
  assert.equal(isProtected(a.s), true);
  return a;
}

test('the replication cable alone cut, a heartbeat path over it and another elsewhere: the primary carries on alone after a heartbeat timeout, not the stall bound', () => {
  const a = protectedPrimaryOnTwoPaths(1);
  const answer = grantAll(a);
  // The cable is cut: the heartbeats over it stop, the others go on, and no checkpoint completes any more.
  a.run(400, { heartbeats: true, paths: [0], answer });
  assert.deepEqual(a.decisions(), [], 'nothing before a heartbeat timeout');
  a.run(200, { heartbeats: true, paths: [0], answer });
  assert.deepEqual(a.decisions(), ['primary-failover'], 'decided within a heartbeat timeout and a tick of the last heartbeat over the cable');
  const d = a.fx.filter((e) => e.t === 'decision').at(-1) as Extract<Effect, { t: 'decision' }>;
  assert.match(d.why, /the replication link is cut: no heartbeat over it for \d+ ms while b is heard on another path, and no checkpoint for \d+ ms/);
  assert.deepEqual(a.runs().at(-1)!.procedure, { kind: 'primary-failover', yank: true }, 'yanks the stuck links first');
});

test('the replication cable cut one way, from the primary: the secondary\'s heartbeats still come over it, ours go unacked; the primary carries on alone after a heartbeat timeout', () => {
  const a = protectedPrimaryOnTwoPaths(1, [0, 1]);
  const answer = grantAll(a);
  a.run(2000, { heartbeats: true, paths: [0, 1], acks: [0, 1], checkpointEveryMs: 300, answer });
  assert.deepEqual(a.decisions(), [], 'both ways fine');
  // What a sends over the replication network is lost: b hears nothing there, so acks nothing there.
  a.run(400, { heartbeats: true, paths: [0, 1], acks: [0], answer });
  assert.deepEqual(a.decisions(), [], 'nothing before a heartbeat timeout');
  a.run(200, { heartbeats: true, paths: [0, 1], acks: [0], answer });
  assert.deepEqual(a.decisions(), ['primary-failover']);
  const d = a.fx.filter((e) => e.t === 'decision').at(-1) as Extract<Effect, { t: 'decision' }>;
  assert.match(d.why, /the replication link is cut one way, from us: none of our heartbeats over it acked for \d+ ms while b's come, and no checkpoint for \d+ ms/);
  // The same unacked heartbeats while checkpoints complete: no cut.
  const flows = protectedPrimaryOnTwoPaths(1, [0, 1]);
  flows.run(3000, { heartbeats: true, paths: [0, 1], acks: [0], checkpointEveryMs: 300, answer: grantAll(flows) });
  assert.deepEqual(flows.decisions(), []);
});

test('a heartbeat path over the replication network silent while checkpoints complete is no cut; nor is a silent second path that does not run over it', () => {
  const flows = protectedPrimaryOnTwoPaths(1);
  flows.run(3000, { heartbeats: true, paths: [0], checkpointEveryMs: 300, answer: grantAll(flows) });
  assert.deepEqual(flows.decisions(), [], 'the stream flows: the path is silent for another reason');
  const elsewhere = protectedPrimaryOnTwoPaths(null);
  elsewhere.run(5000, { heartbeats: true, paths: [0], answer: grantAll(elsewhere) });
  assert.deepEqual(elsewhere.decisions(), [], 'no path runs over the replication network: only the stall bound says the stream is stuck');
  elsewhere.run(600, { heartbeats: true, paths: [0], answer: grantAll(elsewhere) });
  assert.deepEqual(elsewhere.decisions(), ['primary-failover']);
});

test('the secondary\'s daemon restarted (its QEMU runs on): a path that comes back before the one over the replication network is no cut', () => {
  // The lab's daemon test, in CI: b's daemon restarted, a heard b again on the dedicated path a moment before the
  // replication path's session was back, and took the old silence on it for a cut: a carried on alone, and b's
  // QEMU, which had run on, was replaced by a new secondary.
  const a = protectedPrimaryOnTwoPaths(1);
  const answer = grantAll(a);
  a.run(2000, { paths: [], checkpointEveryMs: 2000, answer });
  a.peer = { ...a.peer, boot: 'boot-b-2' };
  a.run(1000, { heartbeats: true, paths: [0], checkpointEveryMs: 2000, answer });
  a.run(3000, { heartbeats: true, paths: [0, 1], checkpointEveryMs: 2000, answer });
  assert.deepEqual(a.decisions(), [], 'the silence on the replication path began before b was heard again: no word on it yet');
  assert.equal(isProtected(a.s), true);
  // Once heard there again, its silence is a cut as before.
  a.run(600, { heartbeats: true, paths: [0], answer });
  assert.deepEqual(a.decisions(), ['primary-failover']);
});

test('the replication cable alone cut (heartbeats fine): the primary carries on alone and status stops saying PROTECTED', () => {
  const a = protectedPrimary();
  const answer = grantAll(a);
  assert.equal(isProtected(a.s), true, 'protected while checkpoints flow');
  // No checkpoint from now on: the stream stalled (no COLO_EXIT comes on a silent link).
  a.run(5000, { heartbeats: true, answer });
  assert.deepEqual(a.decisions(), [], 'no action within the stall bound');
  a.run(600, { heartbeats: true, answer });
  assert.equal(isProtected(a.s), false, 'not PROTECTED once checkpoints stalled');
  assert.ok(statusOf(a.s).degraded.some((d) => /replication stalled: no checkpoint for/.test(d)));
  assert.deepEqual(a.decisions(), ['primary-failover']);
  const run = a.runs().at(-1)!;
  assert.deepEqual(run.procedure, { kind: 'primary-failover', yank: true }, 'yanks the hung links first');
  assert.deepEqual(a.s.disk.epoch, E(2, 'a'), 'a new epoch, recorded at the witness, before writing alone');
  a.in({ t: 'proc-done', id: run.id });
  assert.equal(a.s.role, 'alone');

  // The secondary hears that its primary carries on alone: its VM is out of date; it stops it and waits to be resynced.
  const b = new Node({ name: 'b', peer: 'a' });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary' };
  b.found({ colo: 'secondary' });
  b.run(1000, { heartbeats: true, answer: grantAll(b) });
  b.peer = { ...b.peer, role: 'alone', disk: E(2, 'a') };
  b.run(300, { heartbeats: true, answer: grantAll(b) });
  assert.deepEqual(b.decisions(), ['fence']);
  assert.deepEqual(b.runs().at(-1)!.procedure, { kind: 'fence', yank: 'to-primary' }, 'the links to its primary');
});

test('status: PROTECTED only after a checkpoint was seen, never on the word of an attach alone', () => {
  const a = new Node();
  a.found({ colo: 'primary' });
  a.run(1000, { heartbeats: true, answer: grantAll(a) });
  assert.equal(isProtected(a.s), false, 'just (re)attached: no checkpoint seen yet');
  a.checkpoint();
  assert.equal(isProtected(a.s), true);
  a.in({ t: 'qemu-event', event: 'STOP' });
  a.run(3000, { heartbeats: true, answer: grantAll(a) });
  assert.equal(isProtected(a.s), true, 'a checkpoint under way is normal');
});

test('a node that fenced itself comes back once the lease is its again (it stayed fenced for ever)', () => {
  const a = new Node();
  a.found({ colo: 'none' });
  const grant = grantAll(a);
  a.run(500, { heartbeats: true, answer: grant });
  assert.equal(a.s.role, 'alone');
  // The witness and the peer fall silent: running alone without the lease and without the peer's word → fence.
  const silent = (e: Effect) => (e.t === 'persist-disk' || e.t === 'query-qemu' ? grant(e) : undefined);
  a.run(4000, { answer: silent });
  assert.deepEqual(a.decisions(), ['fence']);
  a.in({ t: 'proc-done', id: a.runs().at(-1)!.id });
  assert.equal(a.s.role, 'fenced');
  a.run(5000, { answer: silent });
  assert.equal(a.s.role, 'fenced', 'no lease: stays fenced');
  // The witness answers again: the lease is ours, so is the VM.
  a.run(500, { answer: grant });
  assert.deepEqual(a.decisions(), ['fence', 'unfence']);
  a.in({ t: 'proc-done', id: a.runs().at(-1)!.id });
  assert.equal(a.s.role, 'alone');
});

test('a witness reply that arrives after the wait: the epoch it recorded becomes ours (both disks were stale for ever)', () => {
  const b = new Node({ name: 'b', peer: 'a' });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary' };
  b.found({ colo: 'secondary' });
  const fast = grantAll(b);
  b.run(1000, { heartbeats: true, answer: fast });
  // The primary dies: COLO_EXIT, and its agent says so.
  b.in({ t: 'qemu-event', event: 'COLO_EXIT' });
  b.peer = { ...b.peer, role: 'down', qemu: 'dead' };
  // The witness grants the lease but its answer to "record 2/b" comes late.
  let recordAsk: Extract<Effect, { t: 'ask-witness' }> | undefined;
  b.run(2500, {
    heartbeats: true,
    answer: (e) => {
      if (e.t === 'ask-witness' && e.next) {
        recordAsk ??= e;
        return undefined;
      }
      return fast(e);
    },
  });
  assert.ok(recordAsk, 'asked the witness to record a new epoch');
  assert.deepEqual(recordAsk.next, E(2, 'b'));
  assert.deepEqual(b.s.disk, { epoch: E(1), pending: E(2, 'b'), persisting: null, sizeBytes: 64 << 20, missedWriteAt: null, forwardedWriteFailedAt: null }, 'the asked-for epoch stays pending on our disk');
  assert.ok(b.fx.some((e) => e.t === 'log' && /did not answer whether it recorded/.test(e.msg)));
  // The late grant: the witness did record it: it is ours now, not a newer epoch nobody holds.
  b.in({ t: 'witness-reply', reply: { t: 'lease', re: recordAsk.id, granted: true, holder: 'b', ttlMs: 1000, newest: E(2, 'b') } });
  b.in({ t: 'disk-persisted', id: b.last('persist-disk')!.id, ok: true });
  assert.deepEqual(b.s.disk.epoch, E(2, 'b'));
  assert.equal(statusOf(b.s).lease.stale, false);
});

test('a failover procedure that fails half-way continues from its step, with back-off, running the same steps', () => {
  const a = new Node();
  a.found({ colo: 'primary' });
  const answer = grantAll(a);
  a.run(1000, { heartbeats: true, answer });
  a.checkpoint();
  a.peer = { ...a.peer, role: 'down', qemu: 'dead' };
  a.run(200, { heartbeats: true, answer });
  const first = a.runs().at(-1)!;
  assert.deepEqual(first.procedure, { kind: 'primary-failover', yank: true });
  assert.equal(first.fromStep, 0);
  // Step 4 fails (a QMP timeout); meanwhile COLO_EXIT arrives (which alone would not ask for a yank).
  a.in({ t: 'proc-progress', id: first.id, stepsDone: 3, step: 'object-del comp0' });
  a.in({ t: 'proc-failed', id: first.id, stepsDone: 3, error: 'step 4 timed out' });
  a.in({ t: 'qemu-event', event: 'COLO_EXIT' });
  const runsBefore = a.runs().length;
  a.run(150, { heartbeats: true, answer });
  assert.equal(a.runs().length, runsBefore, 'not at once: it backs off');
  a.run(200, { heartbeats: true, answer });
  const retry = a.runs().at(-1)!;
  assert.deepEqual([retry.procedure, retry.fromStep], [first.procedure, 3], 'the same procedure, from its fourth step');
  assert.deepEqual(a.s.disk.epoch, E(2, 'a'), 'the epoch is raised once per failure, not per attempt');
  assert.equal(a.fx.filter((e) => e.t === 'ask-witness' && e.next).length, 1);
});

test('an agent restarted after its QEMU died is down, whatever it was; the survivor resyncs it', () => {
  const a = new Node();
  a.found({ running: false });
  assert.equal(a.s.role, 'down');
  // As the survivor sees it: its peer says down, with an older disk.
  const b = new Node({ name: 'b', peer: 'a' }, { epoch: E(2, 'b') });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'down', qemu: 'dead', disk: E(1) };
  b.found({ colo: 'none' });
  b.run(300, { heartbeats: true, answer: grantAll(b) });
  assert.deepEqual(b.decisions(), ['reprotect']);
  const req = b.fx.find((e) => e.t === 'send-peer' && e.msg.t === 'req');
  assert.ok(req && req.t === 'send-peer' && req.msg.t === 'req' && req.msg.body.k === 'resync-prepare');
});

test('re-protection off: the survivor stays alone until an operator asks for a resync, once, under the same rules', () => {
  const b = new Node({ name: 'b', peer: 'a', reprotect: false }, { epoch: E(2, 'b') });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'down', qemu: 'dead', disk: E(1) };
  b.found({ colo: 'none' });
  const answer = grantAll(b);
  b.run(3000, { heartbeats: true, answer });
  assert.deepEqual(b.decisions(), [], 'no resync by itself');
  assert.match(statusOf(b.s).waiting ?? '', /re-protection is off: lockstep resync NAME/);
  b.in({ t: 'operator-resync' });
  b.run(100, { heartbeats: true, answer });
  assert.deepEqual(b.decisions(), ['reprotect']);
  assert.match(b.s.decisions.at(-1)!.why, /as an operator asked/);
  assert.equal(b.s.resyncAskedAt, null, 'the request is used up when the resync begins');
  // A request to a node that does not run the VM alone changes nothing.
  const a = new Node();
  a.found({ running: false });
  a.in({ t: 'operator-resync' });
  assert.equal(a.s.resyncAskedAt, null);
});

test('both hosts lost power: the node with the newest disk restarts the VM; of two equal ones, the first name', () => {
  const newer = new Node({ name: 'b', peer: 'a' }, { epoch: E(3, 'b') });
  newer.peer = { ...newer.peer, boot: 'boot-a', role: 'down', qemu: 'dead', disk: E(2, 'a') };
  newer.found({ running: false });
  newer.run(300, { heartbeats: true, answer: grantAll(newer) });
  assert.deepEqual(newer.decisions(), ['restart']);
  assert.deepEqual(newer.runs().at(-1)!.procedure, { kind: 'restart' });
  assert.deepEqual(newer.s.disk.epoch, E(4, 'b'), 'a new epoch before it writes');

  const older = new Node({}, { epoch: E(2, 'a') });
  older.peer = { ...older.peer, role: 'down', qemu: 'dead', disk: E(3, 'b') };
  older.found({ running: false });
  older.run(300, { heartbeats: true, answer: grantAll(older) });
  assert.deepEqual(older.decisions(), []);

  const first = new Node({}, { epoch: E(2) });
  first.peer = { ...first.peer, role: 'down', qemu: 'dead', disk: E(2) };
  first.found({ running: false });
  first.run(300, { heartbeats: true, answer: grantAll(first) });
  assert.deepEqual(first.decisions(), ['restart']);
});

test('a takeover or restart renews the lease while its procedure runs', () => {
  const a = new Node({}, { epoch: E(2) });
  a.peer = { ...a.peer, role: 'down', qemu: 'dead', disk: E(2) };
  a.found({ running: false });
  a.run(300, { heartbeats: true, answer: grantAll(a) });
  assert.deepEqual(a.decisions(), ['restart']);
  const restart = a.runs().at(-1)!;
  const asked = a.fx.filter((e) => e.t === 'ask-witness').length;
  // A slow procedure: 3 s, three leases' worth.
  a.run(3000, { heartbeats: true, answer: grantAll(a) });
  assert.ok(a.fx.filter((e) => e.t === 'ask-witness').length - asked >= 4, 'renewed while the procedure ran');
  assert.ok(a.s.lease.until > a.now + 500, 'the lease is still ours');
  assert.equal(a.runs().at(-1), restart, 'the procedure still runs');
});

test('the watchdog lets a long checkpoint finish, yanks a stuck one, and ends a frozen QEMU', () => {
  const oobOnly = (n: Node) => (e: Effect): InputBody | undefined => (e.t === 'query-qemu' && e.oob ? { t: 'qemu-answer', id: e.id } : e.t === 'query-qemu' ? undefined : grantAll(n)(e));
  // A checkpoint holds the big lock while a large RAM goes over a slow link: in-band queries wait, the monitor thread answers.
  const b = new Node({ name: 'b', peer: 'a' });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary' };
  b.found({ colo: 'secondary' });
  b.run(1000, { heartbeats: true, answer: grantAll(b) });
  b.checkpoint();
  b.in({ t: 'qemu-event', event: 'STOP' });
  b.run(12_000, { heartbeats: true, answer: oobOnly(b) });
  assert.deepEqual(b.decisions(), [], 'no kill within the checkpoint bound (the 3 s watchdog killed a healthy QEMU here)');
  b.run(1500, { heartbeats: true, answer: oobOnly(b) });
  assert.deepEqual(b.decisions(), ['yank'], 'past the bound: its links to the peer are yanked, out of band');
  assert.deepEqual(b.runs().at(-1)!.procedure, { kind: 'yank', links: 'to-primary' }, 'a secondary yanks its links to the primary');
  b.run(3500, { heartbeats: true, answer: oobOnly(b) });
  assert.deepEqual(b.decisions(), ['yank', 'kill'], 'still stuck after the yank: ended');

  // Frozen: nothing answers, not even out of band. Ended within frozenMs of the first unanswered out-of-band query, not
  // at the hung bound (the outage bench's SIGSTOP took 3.3 s to decide that way).
  const f = new Node();
  f.found({ colo: 'primary' });
  f.run(1000, { heartbeats: true, answer: grantAll(f) });
  const frozenAt = f.now;
  const silent = (e: Effect) => (e.t === 'query-qemu' ? undefined : grantAll(f)(e));
  let killedAt: number | null = null;
  while (f.now < frozenAt + 3000 && killedAt === null) {
    f.run(50, { heartbeats: true, answer: silent });
    if (f.decisions().includes('kill')) killedAt = f.now;
  }
  assert.deepEqual(f.decisions(), ['kill']);
  assert.ok(f.fx.some((e) => e.t === 'kill-qemu'));
  assert.ok(killedAt !== null && killedAt - frozenAt <= f.s.cfg.frozenMs + WATCHDOG_INTERVAL_MS + 100, `ended ${killedAt! - frozenAt} ms after it froze`);
  assert.match(f.fx.find((e): e is Extract<Effect, { t: 'decision' }> => e.t === 'decision')!.why, /not even out of band/);
});

test('a peer whose disk epoch is unknown is resynced only on the witness\'s word, never taken for generation 0', () => {
  const lone = new Node({ witness: false });
  lone.peer = { ...lone.peer, role: 'down', qemu: 'dead', disk: null };
  lone.found({ colo: 'none' });
  lone.run(500, { heartbeats: true, answer: grantAll(lone) });
  assert.deepEqual(lone.decisions(), [], 'no witness: an unknown disk may be newer; it is not overwritten');
  assert.ok(statusOf(lone.s).degraded.some((d) => /b's disk epoch is unknown/.test(d)));

  const w = new Node({}, { epoch: E(2, 'a') });
  w.peer = { ...w.peer, role: 'down', qemu: 'dead', disk: null };
  w.found({ colo: 'none' });
  w.run(500, { heartbeats: true, answer: grantAll(w) });
  assert.deepEqual(w.decisions(), ['reprotect'], 'the lease says ours is the newest disk the witness knows');
});

test('never resync towards a newer or divergent disk', () => {
  for (const theirs of [E(3, 'b'), E(2, 'b')]) {
    const a = new Node({ witness: false }, { epoch: E(2, 'a') });
    a.peer = { ...a.peer, role: 'fenced', disk: theirs };
    a.found({ colo: 'none' });
    a.run(500, { heartbeats: true, answer: grantAll(a) });
    assert.deepEqual(a.decisions(), [], `not towards ${theirs.gen}/${theirs.by}`);
  }
});

test('a resync target refuses a survivor whose disk is older than its own', () => {
  const b = new Node({ name: 'b', peer: 'a' }, { epoch: E(3, 'b') });
  b.found({ running: false });
  b.in({ t: 'peer-message', path: 0, msg: { t: 'req', id: 'r1', body: { k: 'resync-prepare', primary: 'a', disk: E(2, 'a'), sizeBytes: 1 } } });
  const rep = b.last('send-peer')!;
  assert.ok(rep.msg.t === 'rep' && rep.msg.ok === false && /newer/.test(rep.msg.why ?? ''));
  assert.equal(b.runs().length, 0, 'its disk is not touched');
});

test('a secondary never takes over with a disk older than its peer\'s (found by the simulator, seed 1243)', () => {
  const b = new Node({ name: 'b', peer: 'a', witness: false }, { epoch: E(2) });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary', disk: E(3, 'a') };
  b.found({ colo: 'secondary' });
  b.run(500, { heartbeats: true, answer: grantAll(b) });
  // Its primary (which wrote alone as 3/a while we could not hear it) reports its QEMU dead.
  b.peer = { ...b.peer, role: 'down', qemu: 'dead' };
  b.run(300, { heartbeats: true, answer: grantAll(b) });
  assert.deepEqual(b.decisions(), ['fence'], 'our disk lacks what the peer acknowledged alone: no takeover');
});

test('the lease lapses while the new epoch is recorded (a slow witness): asked again before writing alone (seed 34)', () => {
  const b = new Node({ name: 'b', peer: 'a' });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary' };
  b.found({ colo: 'secondary' });
  b.run(1000, { heartbeats: true, answer: grantAll(b) });
  b.in({ t: 'qemu-event', event: 'COLO_EXIT' });
  b.peer = { ...b.peer, role: 'down', qemu: 'dead' };
  b.heartbeat();
  // The grant for the lease comes at once; the record's grant 1.5 s late, counted from when it was asked: already over.
  const lease = b.last('ask-witness')!;
  b.in({ t: 'witness-reply', reply: { t: 'lease', re: lease.id, granted: true, holder: 'b', ttlMs: 1000, newest: E(1) } });
  b.in({ t: 'disk-persisted', id: b.last('persist-disk')!.id, ok: true });
  const record = b.last('ask-witness')!;
  assert.deepEqual(record.next, E(2, 'b'));
  b.now += 1500;
  b.in({ t: 'witness-reply', reply: { t: 'lease', re: record.id, granted: true, holder: 'b', ttlMs: 1000, newest: E(2, 'b') } });
  b.in({ t: 'disk-persisted', id: b.last('persist-disk')!.id, ok: true });
  assert.equal(b.runs().length, 0, 'no takeover without a lease that is still valid');
  assert.equal(b.last('ask-witness')!.id !== record.id, true, 'asks for the lease again');
});

test('a resync target drops its new secondary when the survivor\'s agent restarted (seed 21)', () => {
  const b = new Node({ name: 'b', peer: 'a' });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'alone', busy: 'reprotect', disk: E(2, 'a') };
  b.found({ running: false });
  b.heartbeat();
  b.in({ t: 'peer-message', path: 0, msg: { t: 'req', id: 'r1', body: { k: 'resync-prepare', primary: 'a', disk: E(2, 'a'), sizeBytes: 1 } } });
  const prep = b.runs().at(-1)!;
  assert.equal(prep.procedure.kind, 'prepare-secondary');
  b.in({ t: 'proc-done', id: prep.id, pid: 4242 });
  assert.equal(b.s.work?.kind === 'join' && b.s.work.phase, 'ready');
  // The survivor's host lost power and came back: a new agent, which knows nothing of this resync.
  b.peer = { ...b.peer, boot: 'boot-a2', role: 'down', busy: null };
  b.run(200, { heartbeats: true });
  assert.equal(b.runs().at(-1)!.procedure.kind, 'drop-secondary');
});

test('the agent never says a word before it knows what its QEMU is, and never goes back in time', () => {
  const a = new Node();
  a.run(1000);
  assert.equal(a.fx.filter((e) => e.t === 'send-peer').length, 0, 'no heartbeat while attaching: a "down" would make the peer fail over');
  a.found({ colo: 'primary' });
  a.run(200);
  assert.ok(a.fx.some((e) => e.t === 'send-peer' && e.msg.t === 'hb' && e.msg.role === 'primary'));
  assert.throws(() => step(a.s, { t: 'tick', now: a.now - 1 }), InvariantError);
});

test('without a witness, a fenced former primary never comes back over a peer that wrote alone (review finding)', () => {
  const a = new Node({ witness: false });
  a.peer = { ...a.peer, role: 'alone', disk: E(2, 'b') };
  a.found({ colo: 'primary' });
  a.run(300, { heartbeats: true, answer: grantAll(a) });
  assert.deepEqual(a.decisions(), ['fence'], 'b runs the VM alone: ours must not write');
  a.in({ t: 'proc-done', id: a.runs().at(-1)!.id });
  // b's QEMU dies; it still hears us, and its disk is newer than ours: we wait to be resynced, we do not unfence.
  a.peer = { ...a.peer, role: 'down', qemu: 'dead' };
  a.run(2000, { heartbeats: true, answer: grantAll(a) });
  assert.deepEqual(a.decisions(), ['fence']);
  assert.ok(/newer than ours/.test(a.s.waiting ?? ''), a.s.waiting ?? '');
});

test('a refusal that says nothing of our pending epoch (a witness in its grace period) keeps it pending', () => {
  const b = new Node({ name: 'b', peer: 'a' }, { epoch: E(1), pending: E(2, 'b') });
  b.found({ running: false });
  b.run(100);
  const ask = b.fx.find((e): e is Extract<Effect, { t: 'ask-witness' }> => e.t === 'ask-witness')!;
  assert.deepEqual(ask.next, E(2, 'b'), 'the pending epoch goes with the request');
  b.in({ t: 'witness-reply', reply: { t: 'lease', re: ask.id, granted: false, holder: null, reason: 'witness just started (grace period)', newest: E(2, 'b') } });
  assert.deepEqual(b.s.disk.pending, E(2, 'b'), 'kept: the witness may hold it');
  assert.equal(b.fx.some((e) => e.t === 'persist-disk'), false);
});

test('a survivor whose disk was made after its agent started (a first sync by the daemons) asks for a replica of its real size', () => {
  // The agent started before its replica existed (size 0); the replica it was resynced to is 64 MiB.
  const b = new Node({ name: 'b', peer: 'a', diskSizeBytes: 0 }, { epoch: E(2, 'b') });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'down', qemu: 'dead', disk: E(1) };
  b.found({ colo: 'none', diskSizeBytes: 64 << 20 });
  b.run(300, { heartbeats: true, answer: grantAll(b) });
  const req = b.fx.find((e) => e.t === 'send-peer' && e.msg.t === 'req');
  assert.ok(req && req.t === 'send-peer' && req.msg.t === 'req' && req.msg.body.k === 'resync-prepare');
  assert.equal(req.msg.body.sizeBytes, 64 << 20, 'not the 0 bytes known when the agent started');
});

test('a checkpoint under way when every heartbeat path goes silent: a host lost takes no checkpoint bound (two-VM test, 1 run in 5), a restarted agent\'s slow checkpoint gets it (simulator: restart-kept)', () => {
  const secondary = (): Node => {
    const b = new Node();
    b.peer = { ...b.peer, role: 'primary' };
    b.found({ colo: 'secondary' });
    b.run(1000, { heartbeats: true, answer: grantAll(b) });
    b.checkpoint();
    b.run(100, { heartbeats: true, answer: grantAll(b) });
    assert.equal(isProtected(b.s), true);
    return b;
  };
  // The primary's host is lost while our QEMU receives a checkpoint: its main loop waits on the dead stream.
  const lost = secondary();
  lost.in({ t: 'qemu-event', event: 'STOP' });
  const t0 = lost.now;
  lost.run(lost.s.cfg.heartbeatTimeoutMs + 200, { answer: probing(lost, false) });
  assert.deepEqual(lost.decisions(), ['takeover'], 'taken over as the heartbeat timeout passes: the host answers nothing');
  assert.ok(lost.now - t0 < lost.s.cfg.stallMs, 'before the stall bound, and far before that of a long checkpoint');
  const takeover = lost.runs().at(-1)?.procedure;
  assert.ok(takeover?.kind === 'takeover' && takeover.yank, 'yanking the dead stream first');
  // The primary's agent restarted during a slow checkpoint: its host answers, its VM may still be checkpointing; but
  // no longer than the checkpoint's own bound.
  slowCheckpointWhileThePeerRestarts(secondary, 'takeover', 'the host', /a checkpoint under way for .*, but the primary's host answers/);
  // The same long checkpoint while the primary's agent is heard: it may take up to the checkpoint bound.
  const slow = secondary();
  slow.in({ t: 'qemu-event', event: 'STOP' });
  slow.run(slow.s.cfg.checkpointTimeoutMs - 500, { heartbeats: true, answer: grantAll(slow) });
  assert.deepEqual(slow.decisions(), [], 'a slow checkpoint with the primary heard is left to finish');
  slow.in({ t: 'qemu-event', event: 'RESUME' });
  slow.run(500, { heartbeats: true, answer: grantAll(slow) });
  assert.equal(isProtected(slow.s), true);
});

test('a schema-valid resync-done that carries an older epoch than our disk is refused as invalid, never an assertion (the agent exited 70)', () => {
  const b = new Node({ name: 'b', peer: 'a' }, { epoch: E(2, 'a') });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'alone', busy: 'reprotect', disk: E(2, 'a') };
  b.found({ running: false });
  b.heartbeat();
  b.in({ t: 'peer-message', path: 0, msg: { t: 'req', id: 'r1', body: { k: 'resync-prepare', primary: 'a', disk: E(2, 'a'), sizeBytes: 1 } } });
  b.in({ t: 'proc-done', id: b.runs().at(-1)!.id, pid: 4242 });
  assert.equal(b.s.work?.kind === 'join' && b.s.work.phase, 'ready');
  // The survivor (or anyone who holds the secret) says the resync is done, at an epoch older than our own disk's.
  b.in({ t: 'peer-message', path: 0, msg: { t: 'req', id: 'r2', body: { k: 'resync-done', disk: E(1) } } });
  const rep = b.last('send-peer')!;
  assert.ok(rep.msg.t === 'rep' && rep.msg.re === 'r2' && rep.msg.ok === false && /older/.test(rep.msg.why ?? ''), 'refused, saying why');
  assert.deepEqual(b.s.disk.epoch, E(2, 'a'), 'our record is not taken back');
  assert.equal(b.s.work?.kind === 'join' && b.s.work.phase, 'ready', 'still waits for a valid word');
  assert.ok(b.fx.some((e) => e.t === 'log' && e.level === 'warn' && /refused/.test(e.msg)), 'logged');
  // The valid word is still taken.
  b.in({ t: 'peer-message', path: 0, msg: { t: 'req', id: 'r3', body: { k: 'resync-done', disk: E(2, 'a') } } });
  assert.equal(b.s.work?.kind === 'join' && b.s.work.phase, 'persisting');
});

test('no schema-valid peer message stops the agent: 20,000 random ones, in every phase of a resync and a failover', () => {
  const rng = new Rng(21);
  const epochs = [E(1), E(2, 'a'), E(2, 'b'), E(3, 'a'), { run: 'r0', gen: 9, by: 'b' }, null];
  const roles = ['primary', 'secondary', 'alone', 'fenced', 'down'] as const;
  const message = (n: Node): unknown => {
    const pendingIds = n.s.pending.map((p) => p.id);
    const id = rng.chance(0.5) && pendingIds.length ? rng.pick(pendingIds) : `x${rng.int(1, 5)}`;
    switch (rng.int(0, 5)) {
      case 0:
        return { t: 'hb', boot: rng.pick(['boot-b', 'boot-b2']), seq: rng.int(0, 50), role: rng.pick(roles), qemu: rng.pick(['alive', 'dead', 'unknown']), colo: rng.pick(['ok', 'exited']), hearsPeer: rng.chance(0.5), disk: rng.pick(epochs), checkpointAgeMs: rng.chance(0.5) ? null : rng.int(0, 20_000), busy: rng.pick([null, 'join', 'reprotect', 'takeover', 'fence']) };
      case 1:
        return { t: 'hback', seq: rng.int(0, 50) };
      case 2:
        return { t: 'req', id, body: { k: 'resync-prepare', primary: 'b', disk: rng.pick(epochs.filter((e) => e !== null)), sizeBytes: rng.int(0, 1 << 20) } };
      case 3:
        return { t: 'req', id, body: { k: 'resync-done', disk: rng.pick(epochs.filter((e) => e !== null)) } };
      case 4:
        return { t: 'req', id, body: { k: 'resync-abort', why: 'x' } };
      default:
        return { t: 'rep', re: id, ok: rng.chance(0.5), ...(rng.chance(0.5) ? { pid: rng.int(1, 99999) } : {}) };
    }
  };
  for (let run = 0; run < 200; run++) {
    const n = new Node({ witness: rng.chance(0.7) }, { epoch: rng.pick([E(2, 'a'), E(1), undefined]) });
    n.found(rng.pick([{ colo: 'primary' as const }, { colo: 'secondary' as const }, { colo: 'none' as const }, { running: false }, { runState: 'paused' as const }]));
    for (let i = 0; i < 100; i++) {
      const msg = peerMessageSchema.parse(message(n));
      n.in({ t: 'peer-message', path: 0, msg });
      // Let the work it started go on: its procedures succeed or fail, its records are written.
      for (const e of n.fx.splice(0)) {
        if (e.t === 'run') n.in(rng.chance(0.8) ? { t: 'proc-done', id: e.id, pid: 77 } : { t: 'proc-failed', id: e.id, stepsDone: 0, error: 'x' });
        else if (e.t === 'persist-disk') n.in({ t: 'disk-persisted', id: e.id, ok: rng.chance(0.9) });
      }
      n.now += rng.int(0, 400);
      n.in({ t: 'tick' });
    }
  }
});

test('a QEMU that cannot be attached within the checkpoint and hung bounds is ended by the core, which says why', () => {
  const a = new Node();
  // The runtime keeps trying to attach: QMP's negotiation needs the main loop, which a stuck checkpoint holds.
  a.run(12_500 + 3000);
  assert.deepEqual(a.decisions(), [], 'waited as long as a checkpoint may hold the main loop');
  a.run(100);
  assert.deepEqual(a.decisions(), ['kill']);
  assert.match(a.last('kill-qemu')!.why, /could not be attached in \d+ ms/);
  a.run(1000);
  assert.equal(a.fx.filter((e) => e.t === 'kill-qemu').length, 1, 'once');
  // The next try finds no QEMU: down, and the agent speaks again.
  a.found({ running: false });
  assert.equal(a.s.role, 'down');
  // A connection lost later (the process still there) starts the clock again.
  const b = new Node();
  b.found({ colo: 'primary' });
  b.run(20_000, { heartbeats: true, answer: grantAll(b) });
  b.in({ t: 'qemu-lost', processGone: false });
  b.run(12_500 + 3000, { heartbeats: true, answer: grantAll(b) });
  assert.ok(!b.decisions().includes('kill'), 'not before the bound, counted from the loss');
  b.run(200, { heartbeats: true, answer: grantAll(b) });
  assert.ok(b.decisions().includes('kill'));
});

test('the core names the links a yank shuts: a primary its links to the secondary, a former secondary (fenced) its links to the primary', () => {
  const a = new Node();
  a.found({ colo: 'primary' });
  a.run(1000, { heartbeats: true, answer: grantAll(a) });
  a.heartbeat({ role: 'alone', disk: E(2, 'b') });
  a.run(100, { answer: grantAll(a) });
  assert.deepEqual(a.runs().at(-1)!.procedure, { kind: 'fence', yank: 'to-secondary' });
  // A former secondary, fenced, whose main loop then sticks: the watchdog's yank is towards its primary.
  const b = new Node({ name: 'b', peer: 'a' });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary' };
  b.found({ colo: 'secondary' });
  b.run(1000, { heartbeats: true, answer: grantAll(b) });
  b.peer = { ...b.peer, role: 'alone', disk: E(2, 'a') };
  b.run(300, { heartbeats: true, answer: grantAll(b) });
  b.in({ t: 'proc-done', id: b.runs().at(-1)!.id });
  assert.equal(b.s.role, 'fenced');
  b.run(4000, { heartbeats: true, answer: (e) => (e.t === 'query-qemu' && !e.oob ? undefined : grantAll(b)(e)) });
  assert.deepEqual(b.runs().at(-1)!.procedure, { kind: 'yank', links: 'to-primary' });
});

test('a resync records the new secondary by the pid its agent gave in answer to our request, and 0 when it gave none', () => {
  for (const pid of [4242, undefined]) {
    const a = new Node({}, { epoch: E(2, 'a') });
    a.peer = { ...a.peer, role: 'down', qemu: 'dead', disk: E(1) };
    a.found({ colo: 'none' });
    a.run(500, { heartbeats: true, answer: grantAll(a) });
    const ask = a.fx.find((e): e is Extract<Effect, { t: 'send-peer' }> => e.t === 'send-peer' && e.msg.t === 'req')!;
    assert.ok(ask.msg.t === 'req' && ask.msg.body.k === 'resync-prepare');
    // Another answer that carries a pid, to a request that is not ours, counts for nothing.
    a.in({ t: 'peer-message', path: 0, msg: { t: 'rep', re: 'not-ours', ok: true, pid: 999 } });
    a.in({ t: 'peer-message', path: 0, msg: { t: 'rep', re: ask.msg.id, ok: true, ...(pid !== undefined ? { pid } : {}) } });
    assert.deepEqual(a.runs().at(-1)!.procedure, { kind: 'resume', targetPid: pid ?? 0 });
  }
});

/** Node a running alone at 2/a, whose resync of b (down, at 1/up) has reached its resume: the node and the resume. */
function resuming(o: Partial<CoreConfig> = {}, coloExitBefore = false): { a: Node; resume: Extract<Effect, { t: 'run' }> } {
  const a = new Node(o, { epoch: E(2, 'a') });
  a.peer = { ...a.peer, role: 'down', qemu: 'dead', disk: E(1) };
  a.found({ colo: 'none' });
  // The COLO_EXIT of the session whose failover left us alone, read before the resync began.
  if (coloExitBefore) a.in({ t: 'qemu-event', event: 'COLO_EXIT' });
  a.run(500, { heartbeats: true, answer: grantAll(a) });
  const ask = a.fx.find((e): e is Extract<Effect, { t: 'send-peer' }> => e.t === 'send-peer' && e.msg.t === 'req')!;
  assert.ok(ask.msg.t === 'req');
  a.in({ t: 'peer-message', path: 0, msg: { t: 'rep', re: ask.msg.id, ok: true, pid: 7 } });
  const resume = a.runs().at(-1)!;
  assert.equal(resume.procedure.kind, 'resume');
  return { a, resume };
}

/** The resume's procedure ends while the target's agent takes its new secondary over (its heartbeat says so). */
function resumeDone(a: Node, resume: Extract<Effect, { t: 'run' }>): void {
  a.peer = { ...a.peer, busy: 'join' };
  a.heartbeat();
  a.in({ t: 'proc-done', id: resume.id });
}

/** The target has taken its new secondary over: a secondary in COLO, on our disk's epoch. */
function targetJoined(a: Node): void {
  a.peer = { ...a.peer, role: 'secondary', qemu: 'alive', disk: E(2, 'a'), busy: null };
}

test('a resync taken back after the lease ran out leaves the VM stopped until the lease is ours again (simulator: the take-back let it run without the lease)', () => {
  const { a, resume } = resuming();
  // The witness and the peer fall silent while the resume runs (it stopped the VM for the switch): the lease runs out.
  a.run(1500, { answer: (e) => (e.t === 'query-qemu' ? { t: 'qemu-answer', id: e.id } : undefined) });
  a.in({ t: 'proc-failed', id: resume.id, stepsDone: 13, error: 'the migration to the new secondary failed' });
  const takeBack = a.runs().at(-1)!;
  assert.deepEqual(takeBack.procedure, { kind: 'abort-resume', cont: false }, 'the take-back stops the VM instead of letting it run');
  a.in({ t: 'proc-done', id: takeBack.id });
  assert.equal(a.s.role, 'fenced');
  assert.equal(a.s.qemu.paused, true);
  // The lease again: the VM runs again.
  a.run(500, { answer: grantAll(a) });
  assert.ok(a.decisions().includes('unfence'));
});

test('during a resync, a COLO_EXIT before the new session ran the VM is the old session\'s and does not count; one after it does (real VMs: the old one came after the resync began; soak seed 2,012,518: the new one during the last step)', () => {
  // The old session's COLO thread ends late: its COLO_EXIT comes during the mirror, before the resume stops the VM.
  {
    const { a, resume } = resuming();
    a.in({ t: 'qemu-event', event: 'COLO_EXIT' });
    // The resume's stop, and the new session's first checkpoint running the VM again.
    a.checkpoint();
    resumeDone(a, resume);
    assert.equal(a.s.role, 'primary');
    assert.equal(a.s.qemu.coloExitAt, null, 'the old session\'s COLO_EXIT is forgotten');
    targetJoined(a);
    a.run(300, { heartbeats: true, answer: grantAll(a) });
    assert.ok(!a.decisions().includes('primary-failover'), `no failover (${JSON.stringify(a.fx.filter((e) => e.t === 'decision'))})`);
  }
  // The new session's stream breaks before the resume's last step is done: its COLO_EXIT stands.
  {
    const { a, resume } = resuming();
    a.checkpoint();
    a.in({ t: 'qemu-event', event: 'COLO_EXIT' });
    resumeDone(a, resume);
    assert.equal(isProtected(a.s), false, 'not protected: the new session ended');
    assert.notEqual(a.s.qemu.coloExitAt, null);
    targetJoined(a);
    a.run(300, { heartbeats: true, answer: grantAll(a) });
    assert.ok(a.decisions().includes('primary-failover'), `it fails over (${a.decisions().join(', ')})`);
  }
  // Both: the old session's exit was read before the resync began, then the new session's came (a guest idle on the
  // disk, so no QUORUM_REPORT_BAD says it: hand-written schedule of resume-forgets-its-colo-exit). The new one is
  // recorded, not kept out by the old one.
  {
    const { a, resume } = resuming({}, true);
    assert.notEqual(a.s.qemu.coloExitAt, null, 'the old session\'s COLO_EXIT is on record');
    a.checkpoint();
    a.run(50, { heartbeats: true, answer: grantAll(a) });
    a.in({ t: 'qemu-event', event: 'COLO_EXIT' });
    resumeDone(a, resume);
    assert.equal(isProtected(a.s), false, 'not protected: the new session ended');
    targetJoined(a);
    a.run(300, { heartbeats: true, answer: grantAll(a) });
    assert.ok(a.decisions().includes('primary-failover'), `it fails over (${a.decisions().join(', ')})`);
  }
});

test('attached again while its own resync runs, a node takes that resync\'s objects for its own, not for the leftovers of one stopped half-way (soak seed 3,092,485: a resync that had just protected the pair was taken back)', () => {
  const { a, resume } = resuming();
  a.found({ resumeLeftovers: true });
  assert.equal(a.s.qemu.leftovers, false);
  a.checkpoint();
  resumeDone(a, resume);
  targetJoined(a);
  a.run(300, { heartbeats: true, answer: grantAll(a) });
  assert.ok(!a.decisions().includes('abort-resume'), `not taken back (${a.decisions().join(', ')})`);
  assert.equal(a.s.role, 'primary');
});

test('QUORUM_REPORT_BAD of the replica: the links to the secondary are yanked at once, PROTECTED ends, and the primary carries on alone under a new epoch (simulator: a replica that missed a write took over)', () => {
  const a = new Node();
  a.found({ colo: 'primary' });
  a.run(1000, { heartbeats: true, answer: grantAll(a) });
  a.checkpoint();
  assert.equal(isProtected(a.s), true);
  const pendingFx = a.in({ t: 'quorum-bad', child: 'replica', error: 'No space left on device' });
  assert.equal(isProtected(a.s), false, 'the replica is no exact copy: not protected');
  // Its record and the witness answer (as grantAll would, had they come within run()).
  const answer = grantAll(a);
  for (let todo = [...pendingFx]; todo.length; ) {
    const r = answer(todo.shift()!);
    if (r) todo.push(...a.in(r));
  }
  assert.deepEqual(a.runs()[0]!.procedure, { kind: 'yank', links: 'to-secondary' }, 'yanked before any checkpoint makes the short replica its state');
  a.run(100, { heartbeats: true, answer: grantAll(a) });
  assert.deepEqual(a.decisions(), ['yank', 'primary-failover']);
  assert.deepEqual(a.s.disk.epoch, E(2, 'a'), 'a new epoch at the witness: the secondary\'s disk is stale for good');
  assert.ok(statusOf(a.s).degraded.some((d) => /replica missed a write/.test(d)));

  // Our own disk failed a write the replica took: the secondary's disk is the exact one; our QEMU is ended.
  const c = new Node();
  c.found({ colo: 'primary' });
  c.run(1000, { heartbeats: true, answer: grantAll(c) });
  c.in({ t: 'quorum-bad', child: 'local', error: 'Input/output error' });
  assert.deepEqual(c.decisions(), ['kill']);
  assert.match(c.last('kill-qemu')!.why, /secondary's replica took/);
});

test('the lease ends in our view before it ends at the witness, with both clocks drifting the most they may, the wrong ways', () => {
  const a = new Node();
  a.found({ colo: 'primary' });
  let ask: Extract<Effect, { t: 'ask-witness' }> | undefined;
  a.run(100, { heartbeats: true, answer: (e) => (e.t === 'ask-witness' ? void (ask ??= e) : e.t === 'query-qemu' ? { t: 'qemu-answer', id: e.id } : undefined) });
  assert.ok(ask);
  const sentAt = a.s.pending.find((p) => p.id === ask!.id)!.sentAt;
  a.in({ t: 'witness-reply', reply: { t: 'lease', re: ask.id, granted: true, holder: 'a', ttlMs: 1000, newest: E(1) } });
  // Our clock runs slow, the witness's fast, and the request reaches the witness at once.
  const ours = 1 - CLOCK_DRIFT_MAX;
  const witness = 1 + CLOCK_DRIFT_MAX;
  const oursEndsRealMs = (a.s.lease.until - sentAt) / ours;
  const witnessEndsRealMs = 1000 / witness;
  assert.ok(oursEndsRealMs < witnessEndsRealMs, `our view ends ${oursEndsRealMs.toFixed(3)} ms after we asked, the witness's ${witnessEndsRealMs.toFixed(3)} ms`);
  assert.ok(a.s.lease.until - sentAt > 990, 'and not much earlier');
});

test('the run state QEMU reports wins over a stop or cont whose reply was lost: a VM found stopped while alone is fenced, one found running while fenced is stopped again', () => {
  const a = new Node();
  a.found({ colo: 'none' });
  a.run(500, { answer: grantAll(a) });
  assert.equal(a.s.role, 'alone');
  // A stop that took effect after its step gave up: the watchdog's query-status says paused.
  a.run(600, { answer: (e) => (e.t === 'query-qemu' && !e.oob ? { t: 'qemu-answer', id: e.id, paused: true } : grantAll(a)(e)) });
  assert.ok(a.fx.some((e) => e.t === 'record' && e.event === 'fence' && e.detail.reason === 'our VM was found stopped'), 'taken as fenced');
  assert.ok(a.decisions().includes('unfence'), 'then let run again by the fence\'s rules (the lease is ours)');

  // Fenced (no lease, no peer); a cont that took effect late makes the VM run: it is stopped again.
  const b = new Node();
  b.found({ colo: 'none' });
  b.run(500, { answer: grantAll(b) });
  const silent = (e: Effect): InputBody | undefined => (e.t === 'persist-disk' ? grantAll(b)(e) : e.t === 'query-qemu' && !e.oob ? { t: 'qemu-answer', id: e.id, paused: b.s.qemu.paused } : e.t === 'query-qemu' ? { t: 'qemu-answer', id: e.id } : undefined);
  b.run(3000, { answer: silent });
  assert.deepEqual(b.decisions(), ['fence']);
  b.in({ t: 'proc-done', id: b.runs().at(-1)!.id });
  assert.equal(b.s.role, 'fenced');
  b.run(1000, { answer: (e) => (e.t === 'query-qemu' && !e.oob ? { t: 'qemu-answer', id: e.id, paused: false } : silent(e)) });
  assert.deepEqual(b.decisions(), ['fence', 'fence'], 'stopped again');
  assert.match(b.fx.filter((e): e is Extract<Effect, { t: 'decision' }> => e.t === 'decision').at(-1)!.why, /runs although we stopped it/);
});

test('a fenced primary whose disk failed to take the epoch the witness recorded writes it there before its VM runs again (soak, seed 1,014,094)', () => {
  const a = new Node();
  a.found({ colo: 'primary' });
  a.run(1000, { heartbeats: true, answer: grantAll(a) });
  a.checkpoint();
  // The replica missed a write: a fails over alone under a new epoch; the witness records 2/a, our disk fails to say so.
  let commitFailures = 1;
  const grant = grantAll(a);
  const flaky = (e: Effect): InputBody | undefined => {
    if (e.t === 'persist-disk' && e.pending === undefined && commitFailures > 0) {
      commitFailures--;
      return { t: 'disk-persisted', id: e.id, ok: false, error: 'Input/output error' };
    }
    return grant(e);
  };
  a.run(200, { heartbeats: true, answer: flaky });
  for (let todo = a.in({ t: 'quorum-bad', child: 'replica', error: 'No space left on device' }); todo.length; ) {
    const r = flaky(todo.shift()!);
    if (r) todo.push(...a.in(r));
  }
  for (const r of a.runs().filter((x) => x.procedure.kind === 'yank')) a.in({ t: 'proc-done', id: r.id });
  assert.ok(a.decisions().includes('fence'), `the writer gave up and fenced us (${a.decisions().join(', ')})`);
  assert.deepEqual(a.s.lease.newest, E(2, 'a'), 'the witness recorded 2/a');
  // The lease is still ours (no renewal answered meanwhile, whose grant would write 2/a too): before the VM runs
  // again, 2/a is written on our disk.
  const noRenewal = (e: Effect) => (e.t === 'ask-witness' ? undefined : grant(e));
  assert.deepEqual([a.s.disk.epoch, a.s.disk.pending], [E(1), E(2, 'a')], 'our disk says 1/up, with 2/a pending');
  for (let i = 0; i < 20 && !a.decisions().includes('unfence'); i++) {
    for (const r of a.runs().filter((x) => x.procedure.kind === 'fence')) a.in({ t: 'proc-done', id: r.id });
    a.run(50, { heartbeats: true, answer: a.decisions().includes('commit-recorded') ? grant : noRenewal });
  }
  const d = a.decisions();
  assert.ok(d.indexOf('fence') < d.indexOf('commit-recorded') && d.indexOf('commit-recorded') < d.indexOf('unfence'), `fenced, committed, then un-fenced (${d.join(', ')})`);
  assert.deepEqual(a.s.disk.epoch, E(2, 'a'));
});

/** Node a, a primary in COLO hearing its secondary, 100 ms after a checkpoint: protected. */
function protectedPrimary(): Node {
  const a = new Node();
  a.found({ colo: 'primary' });
  a.run(1000, { heartbeats: true, answer: grantAll(a) });
  a.checkpoint();
  a.run(100, { heartbeats: true, answer: grantAll(a) });
  return a;
}

/** Node b, a secondary in COLO whose primary a says its replica is exact, after a checkpoint: protected. */
function protectedSecondary(): Node {
  const b = new Node({ name: 'b', peer: 'a' });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary', replicaExact: true };
  b.found({ colo: 'secondary' });
  b.run(500, { heartbeats: true, answer: grantAll(b) });
  b.checkpoint();
  assert.equal(isProtected(b.s), true);
  return b;
}

test('a QMP event is dated when QEMU sent it: a checkpoint\'s STOP read 17 s late (the host paused whole) is no checkpoint under way', () => {
  const fresh = protectedSecondary();
  fresh.in({ t: 'qemu-event', event: 'STOP', ageMs: 1 });
  assert.equal(isProtected(fresh.s), true, 'a checkpoint that just began');
  const late = protectedSecondary();
  late.now += 17_000;
  late.in({ t: 'qemu-event', event: 'STOP', ageMs: 17_000 });
  assert.equal(isProtected(late.s), false, 'under way for 17 s, past the checkpoint bound');
  assert.ok(late.s.qemu.checkpointSince !== null && late.s.qemu.checkpointSince <= late.now - 17_000);
});

test('a secondary says PROTECTED only on its primary\'s current word that the replica missed no write (soak, seed 1,019,804)', () => {
  const b = protectedSecondary();
  b.peer = { ...b.peer, replicaExact: false };
  b.run(200, { heartbeats: true, answer: grantAll(b) });
  assert.equal(isProtected(b.s), false, 'the primary says our replica missed a write');
  assert.ok(statusOf(b.s).degraded.some((x) => /replica missed a write/.test(x)));
  assert.equal(b.s.disk.missedWriteAt, null, 'no checkpoint since: our VM, which goes on from the last one, lacks nothing');
  // A checkpoint made it our disk's state: short for good.
  b.peer = { ...b.peer, replicaShort: true };
  b.run(200, { heartbeats: true, answer: grantAll(b) });
  assert.notEqual(b.s.disk.missedWriteAt, null);
  // A primary whose agent restarted no longer knows: our disk stays short until a resync, and never takes over.
  b.peer = { ...b.peer, boot: 'boot-a2', replicaExact: true, replicaShort: false, role: 'fenced' };
  b.run(200, { heartbeats: true, answer: grantAll(b) });
  b.checkpoint();
  assert.equal(isProtected(b.s), false, 'still short');
  assert.ok(!b.decisions().includes('takeover'), `no takeover with a short replica (${b.decisions().join(', ')})`);

  // The primary's agent falls silent while checkpoints go on: nobody watches the replica's writes.
  const c = protectedSecondary();
  for (let i = 0; i < 12; i++) {
    c.run(100, { answer: grantAll(c) });
    c.checkpoint();
  }
  assert.equal(isProtected(c.s), false, 'no word from the primary: not protected, although checkpoints flow');
});

test('a replica whose primary said a forwarded write failed restarts no VM from its disk before a resync, yet its running VM may take over (soak, seed 12,624,199)', () => {
  // No checkpoint since the write failed: our VM made that write, our disk may lack it.
  const b = protectedSecondary();
  b.peer = { ...b.peer, replicaExact: false };
  b.run(200, { heartbeats: true, answer: grantAll(b) });
  assert.equal(b.s.disk.missedWriteAt, null, 'no checkpoint since: not short for a takeover');
  assert.notEqual(b.s.disk.forwardedWriteFailedAt, null);
  // The primary fenced without a new epoch (the witness was down), and our QEMU ended.
  b.peer = { ...b.peer, role: 'fenced', qemu: 'alive', replicaExact: false, disk: E(1) };
  b.in({ t: 'qemu-lost', processGone: true });
  b.run(30_000, { heartbeats: true, answer: grantAll(b) });
  assert.ok(!b.decisions().includes('restart'), `no restart from our disk (${b.decisions().join(', ')})`);
  assert.match(statusOf(b.s).waiting ?? '', /a write to our disk failed .*not restarting from it/);
  assert.ok(statusOf(b.s).degraded.some((x) => /forwarded to our disk failed/.test(x)));
  // Our own epoch on our disk: our takeover began (it commits our VM's own writes to our disk) and made us the
  // writer; the primary's disk is stale at the witness (soak seed 12,705,157).
  const e = protectedSecondary();
  e.peer = { ...e.peer, replicaExact: false };
  e.run(200, { heartbeats: true, answer: grantAll(e) });
  e.s.disk.epoch = E(2, 'b');
  e.peer = { ...e.peer, role: 'fenced', qemu: 'alive', replicaExact: false, disk: E(1) };
  e.in({ t: 'qemu-lost', processGone: true });
  e.run(3000, { heartbeats: true, answer: grantAll(e) });
  assert.deepEqual(e.decisions(), ['restart'], 'the writer restarts');
  // A fenced old primary's word about its last replica is no word about ours after we took over: only a primary's.
  const c = new Node({ name: 'b', peer: 'a' }, { epoch: E(2, 'b') });
  c.peer = { ...c.peer, boot: 'boot-a', role: 'fenced', qemu: 'alive', replicaExact: false, disk: E(1) };
  c.found({ running: false });
  c.run(300, { heartbeats: true, answer: grantAll(c) });
  assert.equal(c.s.disk.forwardedWriteFailedAt, null);
  assert.deepEqual(c.decisions(), ['restart'], 'our disk is newer: we restart');

  // Our VM still runs: it takes over, with the write it made itself.
  const d = protectedSecondary();
  d.peer = { ...d.peer, replicaExact: false };
  d.run(200, { heartbeats: true, answer: grantAll(d) });
  d.peer = { ...d.peer, role: 'fenced', qemu: 'alive', replicaExact: false };
  d.run(300, { heartbeats: true, answer: grantAll(d) });
  assert.ok(d.decisions().includes('takeover'), `our running VM takes over (${d.decisions().join(', ')})`);
});

test('what a replica\'s primary said its disk lacks is written beside its record, and an agent started again keeps it until a resync', () => {
  const notes = (n: Node) => n.fx.flatMap((e) => (e.t === 'note-replica' ? [e.note] : []));
  // A failed forwarded write: noted at once.
  const b = protectedSecondary();
  b.peer = { ...b.peer, replicaExact: false };
  b.run(200, { heartbeats: true, answer: grantAll(b) });
  assert.deepEqual(notes(b), [{ missedWrite: false, forwardedWriteFailed: true }]);
  // Its agent starts again with the note and finds its QEMU gone; the primary fenced without a new epoch: no restart.
  const again = new Node({ name: 'b', peer: 'a' }, { epoch: E(1), note: notes(b).at(-1)! });
  assert.notEqual(again.s.disk.forwardedWriteFailedAt, null, 'remembered');
  again.peer = { ...again.peer, boot: 'boot-a', role: 'fenced', qemu: 'alive', replicaExact: false, disk: E(1) };
  again.found({ running: false });
  again.run(30_000, { heartbeats: true, answer: grantAll(again) });
  assert.ok(!again.decisions().includes('restart'), `no restart from our disk after our restart (${again.decisions().join(', ')})`);
  assert.match(statusOf(again.s).waiting ?? '', /not restarting from it/);

  // A missed write (a checkpoint since): noted too, and a restarted agent's running secondary never takes over.
  const c = protectedSecondary();
  c.peer = { ...c.peer, replicaExact: false, replicaShort: true };
  c.run(200, { heartbeats: true, answer: grantAll(c) });
  assert.deepEqual(notes(c).at(-1), { missedWrite: true, forwardedWriteFailed: true });
  const c2 = new Node({ name: 'b', peer: 'a' }, { epoch: E(1), note: notes(c).at(-1)! });
  c2.peer = { ...c2.peer, boot: 'boot-a', role: 'primary', replicaExact: true, replicaShort: false };
  c2.found({ colo: 'secondary' });
  c2.run(500, { heartbeats: true, answer: grantAll(c2) });
  c2.peer = { ...c2.peer, role: 'fenced' };
  c2.run(3000, { heartbeats: true, answer: grantAll(c2) });
  assert.ok(!c2.decisions().includes('takeover'), `no takeover with a short replica after our restart (${c2.decisions().join(', ')})`);

  // A takeover that finished clears the failed write: our disk has our VM's writes.
  const d = protectedSecondary();
  d.peer = { ...d.peer, replicaExact: false };
  d.run(200, { heartbeats: true, answer: grantAll(d) });
  d.peer = { ...d.peer, role: 'fenced', qemu: 'alive', replicaExact: false };
  d.run(300, { heartbeats: true, answer: grantAll(d) });
  const run = d.runs().at(-1)!;
  assert.equal(run.procedure.kind, 'takeover');
  d.in({ t: 'proc-done', id: run.id });
  assert.deepEqual(notes(d).at(-1), { missedWrite: false, forwardedWriteFailed: false });
});

test('the agent sends its disk epoch with its queries to the witness (a witness with no record of the run learns which disk it holds)', () => {
  const b = new Node({ name: 'b', peer: 'a' });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary' };
  b.found({ colo: 'secondary' });
  b.run(3000, { heartbeats: true, answer: grantAll(b) });
  const q = b.last('query-witness');
  assert.ok(q, 'a secondary queries the witness');
  assert.deepEqual(q.disk, E(1));
  assert.equal(q.run, 'r1');
});

test('a resync target drops its new secondary when the survivor\'s agent restarts, even if it asked before the target heard it (mutation check, schedule 513)', () => {
  const b = new Node({ name: 'b', peer: 'a' });
  b.found({ running: false });
  // No heartbeat of a yet: the request says which agent of a asks.
  b.in({ t: 'peer-message', path: 0, msg: { t: 'req', id: 'r1', body: { k: 'resync-prepare', primary: 'a', disk: E(2, 'a'), sizeBytes: 1, boot: 'boot-a' } } });
  const prep = b.runs().at(-1)!;
  b.in({ t: 'proc-done', id: prep.id, pid: 4242 });
  assert.equal(b.s.work?.kind === 'join' && b.s.work.phase, 'ready');
  // a's agent restarted and says it is the primary of a COLO session it knows nothing of.
  b.peer = { ...b.peer, boot: 'boot-a2', role: 'primary', busy: null, disk: E(2, 'a') };
  b.run(200, { heartbeats: true });
  assert.equal(b.runs().at(-1)!.procedure.kind, 'drop-secondary');
});

test('a take-back of a failed resync that fails is tried again within a failover\'s back-off, not a resync\'s (mutation check, schedule 1,473)', () => {
  const { a, resume } = resuming({ witness: false });
  a.in({ t: 'proc-failed', id: resume.id, stepsDone: 7, error: 'object-add filter-redirector: injected' });
  const takeBack = a.runs().at(-1)!;
  assert.equal(takeBack.procedure.kind, 'abort-resume');
  a.in({ t: 'proc-failed', id: takeBack.id, stepsDone: 0, error: 'primary failover: reply lost' });
  a.found({ colo: 'none', resumeLeftovers: true, runState: 'paused' });
  const before = a.runs().length;
  a.run(1000, { heartbeats: true, answer: grantAll(a) });
  assert.ok(a.runs().slice(before).some((r) => r.procedure.kind === 'abort-resume'), 'the take-back is tried again within a second');
});

/**
 * A checkpoint under way while the peer's agent restarts (silent, but its host or QEMU answers the probe, as `who`
 * says): left to finish past the stall bound, and the pair is one again once it ends and the new agent is heard;
 * `waiting` says why meanwhile. A checkpoint past its own bound is a stall: `decision` follows.
 */
function slowCheckpointWhileThePeerRestarts(make: () => Node, decision: string, who: string, waiting: RegExp): void {
  const restarting = make();
  restarting.in({ t: 'qemu-event', event: 'STOP' });
  restarting.run(restarting.s.cfg.stallMs + 1500, { answer: probing(restarting, true) });
  assert.deepEqual(restarting.decisions(), [], `past the stall bound, a checkpoint under way with ${who} answering is left to finish`);
  assert.match(restarting.s.waiting ?? '', waiting);
  restarting.in({ t: 'qemu-event', event: 'RESUME' });
  restarting.peer = { ...restarting.peer, boot: `${restarting.peer.boot}-2` };
  restarting.run(1000, { heartbeats: true, answer: probing(restarting, true) });
  assert.deepEqual(restarting.decisions(), []);
  assert.equal(isProtected(restarting.s), true, 'the pair is one again with the restarted agent');
  const stuck = make();
  stuck.in({ t: 'qemu-event', event: 'STOP' });
  stuck.run(stuck.s.cfg.checkpointTimeoutMs - 200, { answer: probing(stuck, true) });
  assert.deepEqual(stuck.decisions(), []);
  stuck.run(400, { answer: probing(stuck, true) });
  assert.deepEqual(stuck.decisions(), [decision], `a checkpoint past its own bound is a stall, ${who} answering or not`);
}

/** Answers as `grantAll`, and every probe of the peer with `alive`. */
function probing(n: Node, alive: boolean): (e: Effect) => InputBody | undefined {
  const grant = grantAll(n);
  return (e) => (e.t === 'probe-peer' ? { t: 'probe-result', id: e.id, alive } : grant(e));
}

test('a secondary whose primary\'s host answers nothing takes over at once (through the lease); one whose host answers waits for the stall', () => {
  const gone = protectedSecondary();
  const silentAt = gone.now;
  gone.run(1000, { answer: probing(gone, false) });
  const probes = gone.fx.filter((e): e is Extract<Effect, { t: 'probe-peer' }> => e.t === 'probe-peer');
  assert.ok(probes.length >= 1 && probes.every((p) => p.what === 'host'), 'the secondary probes the primary\'s host');
  assert.deepEqual(gone.decisions(), ['takeover']);
  const decided = gone.fx.find((e): e is Extract<Effect, { t: 'decision' }> => e.t === 'decision')!;
  assert.match(decided.why, /the primary's host answers nothing/);
  assert.ok(gone.s.work?.kind === 'takeover' && gone.s.work.stalled, 'taken as a stall: a failed attempt does not fence our VM');
  const first = gone.fx.findIndex((e) => e.t === 'probe-peer');
  assert.ok(first >= 0 && gone.fx.findIndex((e) => e.t === 'decision') > first, 'decided after the probe');
  assert.ok(gone.s.work!.startedAt - silentAt <= 500 + 100, `decided ${gone.s.work!.startedAt - silentAt} ms after the last heartbeat`);

  const up = protectedSecondary();
  up.run(5000, { answer: probing(up, true) });
  assert.deepEqual(up.decisions(), [], 'the host answers: its VM may still checkpoint to us; no takeover before the stall');
  assert.match(up.s.waiting ?? '', /primary's host answers|checkpoints continue/);
  up.run(1000, { answer: probing(up, true) });
  assert.deepEqual(up.decisions(), ['takeover'], 'the stall decides, as before');
  assert.match(up.fx.find((e): e is Extract<Effect, { t: 'decision' }> => e.t === 'decision')!.why, /no heartbeat and no checkpoint/);

  // Without a witness, silence is never enough: no probe is even sent.
  const b = new Node({ name: 'b', peer: 'a', witness: false });
  b.peer = { ...b.peer, boot: 'boot-a', role: 'primary', replicaExact: true };
  b.found({ colo: 'secondary' });
  b.run(500, { heartbeats: true, answer: grantAll(b) });
  b.checkpoint();
  b.run(3000, { answer: probing(b, false) });
  assert.equal(b.fx.filter((e) => e.t === 'probe-peer').length, 0);
  assert.deepEqual(b.decisions(), []);
});

test('a probe of the peer whose result never comes is sent again', () => {
  const b = protectedSecondary();
  b.run(3000, { answer: grantAll(b) });
  const probes = b.fx.filter((e) => e.t === 'probe-peer').length;
  assert.ok(probes >= 2 && probes <= 6, `${probes} probes in 2.5 s of silence`);
  assert.deepEqual(b.decisions(), [], 'no answer is no evidence');
});

test('a primary cut off from its secondary and the witness stops its VM before its lease can be anyone else\'s (the lab\'s isolation test: two running VMs)', () => {
  const a = protectedPrimary();
  assert.equal(isProtected(a.s), true);
  // The heartbeats stop first; the witness answers 400 ms longer (its cable cut a moment later), then nothing.
  const cutAt = a.now;
  let lastGrantAskedAt = -1;
  const base = probing(a, false);
  const answer = (e: Effect): InputBody | undefined => {
    if (e.t === 'ask-witness' || e.t === 'query-witness') {
      if (a.now - cutAt >= 400) return undefined;
      if (e.t === 'ask-witness') lastGrantAskedAt = a.now;
    }
    return base(e);
  };
  let fencedAt: number | null = null;
  const end = a.now + 4000;
  while (a.now < end) {
    a.run(50, { answer });
    if (fencedAt === null && a.decisions().includes('fence')) fencedAt = a.now;
  }
  // The witness's lease, by its clock, ends leaseMs after the last request it granted.
  const leaseEndsAt = lastGrantAskedAt + 1000;
  assert.ok(fencedAt !== null, `fenced (${a.decisions().join(', ')})`);
  assert.ok(fencedAt < leaseEndsAt, `fenced at +${fencedAt - cutAt} ms, before the witness's lease ended at +${leaseEndsAt - cutAt} ms`);
  const fence = a.runs().find((r) => r.procedure.kind === 'fence');
  assert.ok(fence, 'its VM is stopped (the fence procedure)');
  assert.ok(!a.runs().some((r) => r.procedure.kind === 'primary-failover'), 'no failover procedure without the lease');
});

/** Runs `n` silent for `ms`, answering its probes `PROBE_TIMEOUT_MS` after each was sent; returns when each decision came. */
function silentWithSlowProbes(n: Node, ms: number, alive: boolean): Array<{ action: string; at: number }> {
  const grant = grantAll(n);
  const out: Array<{ id: string; at: number }> = [];
  const decided: Array<{ action: string; at: number }> = [];
  const end = n.now + ms;
  while (n.now < end) {
    const before = n.fx.length;
    n.run(10, {
      answer: (e) => {
        if (e.t === 'probe-peer') {
          out.push({ id: e.id, at: n.now + PROBE_TIMEOUT_MS });
          return undefined;
        }
        return grant(e);
      },
    });
    for (const p of out.filter((x) => x.at <= n.now)) {
      out.splice(out.indexOf(p), 1);
      n.in({ t: 'probe-result', id: p.id, alive });
    }
    for (const e of n.fx.slice(before)) if (e.t === 'decision') decided.push({ action: e.action, at: n.now });
  }
  return decided;
}

test('a silent primary\'s host is probed ahead of the heartbeat timeout, so that the takeover is decided as the timeout passes, not a probe\'s bound later', () => {
  const b = protectedSecondary();
  const lastHeardAt = b.s.peer.paths[0]!.lastHeardAt!;
  const decided = silentWithSlowProbes(b, 1500, false);
  const probe = b.fx.find((e): e is Extract<Effect, { t: 'probe-peer' }> => e.t === 'probe-peer');
  assert.ok(probe, 'a probe');
  assert.equal(probe.what, 'host');
  const takeover = decided.find((d) => d.action === 'takeover');
  assert.ok(takeover, `a takeover (${decided.map((d) => d.action).join(', ')})`);
  // The probe went out 200 ms into the silence (500 - PROBE_TIMEOUT_MS), its "no answer" came 300 ms later: the
  // takeover is decided when the heartbeat timeout has passed, within a tick or two (a probe sent at the timeout
  // would have decided at 800 ms or more).
  const afterMs = takeover.at - lastHeardAt;
  assert.ok(afterMs >= 500 && afterMs <= 500 + 60, `decided ${afterMs} ms after the last heartbeat`);
  assert.equal(probeSilenceMs(b.s.cfg), 200);
  assert.equal(probeSilenceMs({ ...b.s.cfg, heartbeatTimeoutMs: 300 }), 200, 'never before two heartbeats were missed');
});

test('a probe speaks only for the silence it was sent in: an "alive" from a moment of lag does not hold off the probe of a host lost just after', () => {
  const b = protectedSecondary();
  // Heartbeats pause for 450 ms (a loaded host): the probe goes out and the primary's host answers.
  silentWithSlowProbes(b, 450, true);
  assert.equal(b.fx.filter((e) => e.t === 'probe-peer').length, 1, 'probed once in the pause');
  assert.equal(b.s.peer.probeResult?.alive, true);
  // Then heartbeats again, and then the host is lost: a fresh probe, and the takeover as the timeout passes.
  b.heartbeat();
  const lastHeardAt = b.now;
  const decided = silentWithSlowProbes(b, 1200, false);
  assert.equal(b.fx.filter((e) => e.t === 'probe-peer').length, 2, 'a second probe for the new silence');
  const takeover = decided.find((d) => d.action === 'takeover');
  assert.ok(takeover && takeover.at - lastHeardAt <= 560, `the takeover ${takeover ? takeover.at - lastHeardAt : 'never'} ms after the last heartbeat`);
});

test('a primary probes a silent secondary\'s QEMU ahead of the heartbeat timeout, and carries on alone as the timeout passes', () => {
  const a = protectedPrimary();
  const lastHeardAt = a.s.peer.paths[0]!.lastHeardAt!;
  const decided = silentWithSlowProbes(a, 1500, false);
  assert.equal(a.fx.find((e): e is Extract<Effect, { t: 'probe-peer' }> => e.t === 'probe-peer')?.what, 'qemu');
  const failover = decided.find((d) => d.action === 'primary-failover');
  assert.ok(failover, `a primary failover (${decided.map((d) => d.action).join(', ')})`);
  assert.ok(failover.at - lastHeardAt <= 560, `decided ${failover.at - lastHeardAt} ms after the last heartbeat`);
});

test('a checkpoint under way while the secondary is silent: a QEMU that answers gets the checkpoint\'s own bound, one that answers nothing is left at once (simulator: restart-kept, soak seeds 12,501,500 and 12,601,061)', () => {
  // The secondary's daemon restarts in the middle of a slow checkpoint: its QEMU answers, and takes the checkpoint;
  // but no longer than the checkpoint's own bound.
  slowCheckpointWhileThePeerRestarts(protectedPrimary, 'primary-failover', 'the secondary\'s QEMU', /no heartbeat from the secondary's agent, but its QEMU answers/);
  // The secondary's host lost in the middle of the checkpoint: its QEMU answers nothing, and we go on alone at once.
  const lost = protectedPrimary();
  lost.in({ t: 'qemu-event', event: 'STOP' });
  lost.run(lost.s.cfg.heartbeatTimeoutMs + 200, { answer: probing(lost, false) });
  assert.deepEqual(lost.decisions(), ['primary-failover']);
});

test('a restarted primary whose attach took long (its QEMU in a slow checkpoint answers no QMP) does not fence at once: the start\'s grace runs from its first attach too (soak seed 12,607,131)', () => {
  const a = new Node();
  // The secondary is heard, but does not hear us: we say nothing before we know what our QEMU is.
  a.peer = { ...a.peer, hearsPeer: false };
  a.run(2500, { heartbeats: true, answer: grantAll(a) });
  a.found({ colo: 'primary' });
  assert.deepEqual(a.decisions(), [], 'no fence as it attaches, past the start\'s grace counted from the start');
  a.run(150, { heartbeats: true, answer: grantAll(a) });
  a.peer = { ...a.peer, hearsPeer: true };
  a.checkpoint();
  a.run(1000, { heartbeats: true, answer: grantAll(a) });
  assert.deepEqual(a.decisions(), []);
  assert.equal(isProtected(a.s), true, 'the lease is ours again, and the secondary hears us');
});

test('the secondary\'s agent killed, its last heartbeat over the replication path a little before its last over the other: no cut, its silence decides (soak seed 12,606,826)', () => {
  const a = protectedPrimaryOnTwoPaths(1);
  a.run(100, { heartbeats: true, paths: [0], answer: probing(a, true) });
  a.run(1500, { answer: probing(a, true) });
  assert.deepEqual(a.decisions(), [], 'its QEMU answers: not a cut, and no failover before the stall');
  assert.match(a.s.waiting ?? '', /no heartbeat from the secondary's agent, but its QEMU answers/);
});

test('a QMP query sent as a long checkpoint began waits only from the checkpoint\'s end: no yank as an 8 s checkpoint ends (soak seed 12,505,990)', () => {
  const a = protectedPrimary();
  const grant = grantAll(a);
  let held = true;
  const pending: string[] = [];
  // The main loop is held by the checkpoint: in-band queries wait for it; out-of-band ones are answered.
  const answer = (e: Effect): InputBody | undefined => {
    if (e.t === 'query-qemu' && !e.oob && held) {
      pending.push(e.id);
      return undefined;
    }
    return grant(e);
  };
  a.in({ t: 'qemu-event', event: 'STOP' });
  a.run(8000, { heartbeats: true, answer });
  a.in({ t: 'qemu-event', event: 'RESUME' });
  a.run(50, { heartbeats: true, answer });
  held = false;
  for (const id of pending) a.in({ t: 'qemu-answer', id });
  a.run(1000, { heartbeats: true, answer });
  assert.deepEqual(a.decisions(), [], 'the checkpoint ended within its bound, and the main loop answers');
  assert.equal(isProtected(a.s), true);
});
