/**
 * The simulated QEMUs: processes with the state that the procedures' checks
 * read (QOM objects, chardevs, the replication child, the NBD server, the
 * migration), the COLO session between a primary and a secondary, and where
 * the VM's writes land. What QEMU does here is what the real-VM tests
 * observed or QEMU's source says; each behaviour names its source:
 * - [notes4]  QEMU 7.2 COLO notes, step 4: the secondary reports COLO_EXIT
 *             ~15 ms after its primary is killed (a reset on the stream),
 *             before any QMP command; its guest keeps running.
 * - [colo.c]  migration/colo.c, colo_do_checkpoint_transaction: the primary
 *             asks (CHECKPOINT_REQUEST) and waits for the reply *before* it
 *             stops the VM: on a silent link it waits for ever with the VM
 *             running; then it stops the VM (STOP), sends RAM holding the big
 *             lock (patch 0001), waits for VMSTATE_LOADED and starts the VM
 *             again (vm_start, RESUME) whatever stopped it before.
 * - [colo.c2] colo_process_checkpoint, out: on an error COLO_EXIT(error) is
 *             sent and the thread waits for a failover; no more checkpoints.
 *             query-colo-status says primary/secondary until
 *             x-colo-lost-heartbeat.
 * - [quorum]  block/quorum.c, quorum_co_pwritev / write_quorum_entry, with
 *             vote-threshold=1: a write completes once every child answered,
 *             and succeeds if one did; each child that failed is reported
 *             with QUORUM_REPORT_BAD (its node-name, the error). A dead NBD
 *             child (reset, yanked) fails fast; a silent one blocks the write.
 * - [P5]      block/replication.c with lockstep's patch 0005 (stock QEMU
 *             reports a forwarded write the secondary's disk failed as done,
 *             and says nothing: test/integration/p5-replica-write-errors):
 *             the error is returned, so quorum says QUORUM_REPORT_BAD for the
 *             replica at once, and recorded (s->error), so the primary's next
 *             checkpoint fails after the VM stopped and before anything is
 *             sent or released (replication_do_checkpoint_all): COLO ends on
 *             the primary (COLO_EXIT). Its secondary, stopped for the
 *             checkpoint, hears of it when the primary's end is shut (its
 *             failover); here at once, as for any end that breaks. Schedules
 *             of replicaErrors 'reported' leave the checkpoint half out.
 * - [replication] block/replication.c and the block replication design
 *             (docs/block-replication.txt): the secondary's VM writes to its
 *             active disk; the primary's writes land in the replica, the old
 *             data of each block kept in the hidden disk; a checkpoint empties
 *             both, so the secondary's disk is then the replica; at failover
 *             the active disk is what its VM wrote since the last checkpoint.
 *             A replica write that failed before a checkpoint is thus missing
 *             from the secondary's disk for good.
 * - [compare] net/colo-compare.c: a primary packet leaves only when the
 *             secondary sent the same, or after a checkpoint: with the stream
 *             stalled or broken, answers are held until colo-compare is gone
 *             (object-del: colo_compare_finalize flushes them, though in 7.2 and
 *             10.0 only after detaching its output chardev, so that the flush
 *             drops them; the model releases them, the stricter reading) or the
 *             node leaves COLO.
 * - [agents]  test/integration/agent-failover.test.ts: kill -9 of a QEMU on a
 *             live host resets its connections; a host that loses power or a
 *             pulled cable does not (partition-hosts.test.ts: the takeover is
 *             driven by the stall, 4.6-5.6 s after the cut).
 * - [resync]  test/integration/resync.test.ts: a cut cable stalls a mirror,
 *             given up after MIRROR_STALL_MS; the VM is stopped ~0.8 s for the switch.
 * - [late-exit] test/integration/resync.test.ts (the 10-cycle test, with a
 *             COLO_EXIT that counted for the resume): after a failover, the old
 *             session's COLO_EXIT reached the agent after its resync began
 *             (the secondary's QEMU had been killed); migration/colo.c sends
 *             it as the COLO thread ends, which a yank or
 *             x-colo-lost-heartbeat only asks for, and a primary's thread
 *             waiting between checkpoints reads nothing from the stream.
 * - [migration.c] migrate_prepare: no migration starts while one runs (the
 *             old COLO thread's, until it ends); a stopped VM that a
 *             migration or cont runs again sends RESUME, stop sends STOP.
 * - [live]    migration.c (migration_completion, migration_maybe_pause,
 *             migration_iteration_finish) and the live resume's lab runs: with
 *             pause-before-switchover the RAM goes over while the VM runs; QEMU
 *             stops the VM for the last pass (STOP; run state finish-migrate,
 *             which query-status reports as neither running nor paused) and
 *             waits in pre-switchover for migrate-continue or migrate_cancel;
 *             a yank does not end that wait. A migration that fails or is
 *             cancelled after that stop runs the VM again (RESUME) if it ran
 *             before. The mirror copies in the background (block/mirror.c,
 *             copy-mode background): a guest write never waits for its
 *             target. The VM was stopped 0.1-0.3 s per switch in the lab.
 * - [freeze]  SIGSTOP stops every thread, the monitor's too: neither in-band
 *             nor out-of-band commands are answered; the kernel still accepts
 *             TCP connections to its listening sockets (the NBD probe says
 *             alive). A paused host answers nothing, not even a SYN.
 */
import { IDS } from '../qemu/cmdline.js';
import type { World, Host } from './world.js';
import type { Rng } from './rng.js';
import type { NodeName } from './schedule-types.js';

export interface MirrorJob {
  target: SimQemu;
  startedAt: number;
  ready: boolean;
  /** Since when it made no progress (its link cut). */
  stalledSince: number | null;
}

export interface SimQemu {
  pid: number;
  node: NodeName;
  alive: boolean;
  /** query-colo-status's mode ([colo.c2]: until x-colo-lost-heartbeat). */
  colo: 'primary' | 'secondary' | 'none';
  /** Started with -incoming: waits for the migration that makes it a secondary. */
  incoming: boolean;
  /** The VM is stopped (stop, a fence, a checkpoint's switch). */
  paused: boolean;
  /** SIGSTOP: nothing runs, nothing answers. */
  frozen: boolean;
  /** Its COLO stream broke at this end, and when. */
  broken: boolean;
  brokenAt: number;
  /**
   * When its COLO thread ended and sent COLO_EXIT (≥ brokenAt): asked to end (a yank, x-colo-lost-heartbeat), the
   * thread may take a while ([late-exit]); until then no new migration starts ([migration.c]).
   */
  exitAt: number;
  /** QMP events leave a monitor in order: none of this QEMU's reaches its agent before this time. */
  eventsFrom: number;
  /** Its main loop holds the big lock until then (Infinity: stuck on a silent link). */
  bqlUntil: number;
  /** QOM objects (qom-list /objects) and chardevs (query-chardev) that the procedures add and delete. */
  objects: Set<string>;
  chardevs: Set<string>;
  /** The primary's replication child: absent, a block node, or attached to the quorum. */
  replication: 'none' | 'node' | 'child';
  /** A secondary's NBD server exporting its replica. */
  nbdServer: boolean;
  xColo: boolean;
  /** The outgoing migration has the client's TLS credentials (migrate-set-parameters). */
  migrationTlsClient: boolean;
  /** pause-before-switchover (migrate-set-capabilities): a migration waits before its switchover ([live]). */
  pauseBeforeSwitchover: boolean;
  /** 'pre-switchover': stopped for the last pass, waiting for migrate-continue ([live]). */
  migration: 'none' | 'active' | 'pre-switchover' | 'colo' | 'completed' | 'cancelled';
  /**
   * QEMU stopped the VM for the migration's last pass (run state finish-migrate, until COLO or the migration's end),
   * and whether the VM ran before: a failed migration then runs it again ([live]).
   */
  lastPass: { ranBefore: boolean } | null;
  mirror: MirrorJob | null;
  /** The watchdog's queries waiting for an answer. */
  queries: Array<{ id: string; oob: boolean; boot: string }>;
  /**
   * In-band commands whose reply the runtime gave up on, that take effect
   * later (the qmp-late fault): a monitor runs its in-band commands in order,
   * so they take effect before any later one.
   */
  late: Array<() => void>;
}

export interface Session {
  id: number;
  p: NodeName;
  s: NodeName;
  pq: SimQemu;
  sq: SimQemu;
  phase: 'idle' | 'await-reply' | 'sending';
  phaseSince: number;
  lastCheckpointAt: number;
  startedAt: number;
  /** The stream broke (an end gone or yanked): no more checkpoints. */
  over: boolean;
  overAt: number;
  /** A write forwarded to the secondary failed since the session began ([replication-err]: s->error). */
  replicaFailed: boolean;
}

const PROXY_OBJECTS = [IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut, IDS.iothread, IDS.compare];
const PRIMARY_CHARDEVS = [IDS.mirrorChardev, IDS.compare1, IDS.compare0, IDS.compare0Client, IDS.compareOut, IDS.compareOutClient];
const SECONDARY_OBJECTS = [IDS.secRedirectorIn, IDS.secRedirectorOut, IDS.rewriter];
const SECONDARY_CHARDEVS = [IDS.secChardevIn, IDS.secChardevOut];

export type QemuKind = 'colo-primary' | 'colo-secondary' | 'incoming' | 'alone';

export class Qemus {
  private nextPid = 100;
  private nextSession = 1;
  session: Session | null = null;
  /** Ends whose peer is gone, who will learn it by a reset once the link is back. */
  private pendingResets: Array<{ s: Session; q: SimQemu; why: string }> = [];
  /** Ends whose peer vanished without a reset: they learn it only when the peer's host answers again. */
  private silentEnds: Array<{ s: Session; q: SimQemu; host: NodeName }> = [];

  constructor(private readonly w: World) {}

  /** A QEMU as `up`, a restart (alone) or a resync (incoming) starts it ([the command lines of qemu/cmdline.ts]). */
  create(node: NodeName, kind: QemuKind): SimQemu {
    const secondary = kind === 'colo-secondary' || kind === 'incoming';
    return {
      pid: this.nextPid++,
      node,
      alive: true,
      colo: kind === 'colo-primary' ? 'primary' : kind === 'colo-secondary' ? 'secondary' : 'none',
      incoming: kind === 'incoming',
      paused: kind === 'incoming',
      frozen: false,
      broken: false,
      brokenAt: 0,
      exitAt: 0,
      eventsFrom: 0,
      bqlUntil: 0,
      objects: new Set(kind === 'colo-primary' ? PROXY_OBJECTS : secondary ? SECONDARY_OBJECTS : []),
      chardevs: new Set(secondary ? SECONDARY_CHARDEVS : PRIMARY_CHARDEVS),
      replication: kind === 'colo-primary' ? 'child' : 'none',
      nbdServer: kind === 'colo-secondary',
      xColo: kind === 'colo-primary' || kind === 'colo-secondary',
      migrationTlsClient: kind === 'colo-primary',
      pauseBeforeSwitchover: false,
      migration: kind === 'colo-primary' || kind === 'colo-secondary' ? 'colo' : 'none',
      lastPass: null,
      mirror: null,
      queries: [],
      late: [],
    };
  }

  host(q: SimQemu): Host {
    return this.w.hosts[q.node];
  }

  /** Nothing of it runs: SIGSTOP, or its host paused or without power. */
  stopped(q: SimQemu): boolean {
    const h = this.host(q);
    return q.frozen || h.paused || !h.up;
  }

  /** It answers a command now: in band, only while its main loop is free and no command sent before is still stuck (qmp-late). */
  responsive(q: SimQemu, oob: boolean): boolean {
    return q.alive && !this.stopped(q) && (oob || (q.bqlUntil <= this.w.now && q.late.length === 0));
  }

  /** The VM runs guest code (it may write and answer). */
  running(q: SimQemu): boolean {
    return q.alive && !q.paused && !q.incoming;
  }

  /** Commands that took effect late, before anything sent after them (in-band commands run in order). */
  runLate(q: SimQemu): void {
    for (const fn of q.late.splice(0)) fn();
  }

  /** Answers the watchdog's queries that QEMU can answer now. */
  answerQueries(q: SimQemu): void {
    const h = this.host(q);
    for (const x of [...q.queries]) {
      if (!this.responsive(q, x.oob)) continue;
      if (!x.oob) this.runLate(q);
      q.queries.splice(q.queries.indexOf(x), 1);
      // query-status: 'paused' or 'running' (a new secondary waits 'inmigrate', a migration's last pass 'finish-migrate':
      // no word on either).
      const paused = x.oob || q.incoming || q.lastPass ? undefined : q.paused;
      this.w.after(this.w.rng.qemu.range(0.5, 3), () => {
        if (h.agent?.boot === x.boot && h.agent.attached === q.pid && q.alive) this.w.agents.input(h.name, { t: 'qemu-answer', id: x.id, ...(paused !== undefined ? { paused } : {}) });
      });
    }
  }

  /**
   * A QMP event, to the agent attached to this QEMU, after the ones it sent before (a monitor sends in order).
   * `laterMs`: it leaves QEMU that much later (a COLO thread winding down). `rng`: the stream its delay is drawn from.
   */
  event(q: SimQemu, e: { t: 'qemu-event'; event: 'STOP' | 'RESUME' | 'COLO_EXIT' } | { t: 'quorum-bad'; child: 'replica' | 'local'; error: string }, o: { laterMs?: number; rng?: Rng } = {}): void {
    const h = this.host(q);
    const boot = h.agent?.boot;
    const sentAt = this.w.now + (o.laterMs ?? 0);
    const at = Math.max(sentAt + (o.rng ?? this.w.rng.qemu).range(0.2, 2), q.eventsFrom);
    q.eventsFrom = at;
    this.w.after(at - this.w.now, () => {
      // Its QMP timestamp, on the host's clock (read here, a moment after it was sent).
      const sentAtLocal = this.w.agents.local(h) - (this.w.now - sentAt);
      if (h.agent && h.agent.boot === boot && h.agent.attached === q.pid && q.alive) this.w.agents.input(h.name, e, e.t === 'qemu-event' ? sentAtLocal : undefined);
    });
  }

  /** The VM stops or runs again (stop, cont, a migration's end): QEMU says so (STOP, RESUME). */
  runState(q: SimQemu, paused: boolean): void {
    if (q.paused === paused) return;
    q.paused = paused;
    this.event(q, { t: 'qemu-event', event: paused ? 'STOP' : 'RESUME' }, { rng: this.w.rng.events });
  }

  /** How long a COLO thread asked to end takes before its COLO_EXIT ([late-exit]): half the time at once. */
  private lateExitMs(): number {
    return this.w.rng.events.chance(0.5) ? 0 : this.w.rng.events.range(20, 2500);
  }

  /** This end's stream broke now; its COLO thread ends, and sends COLO_EXIT, `laterMs` after ([late-exit]). */
  private markBroken(q: SimQemu, laterMs: number): void {
    q.broken = true;
    q.brokenAt = this.w.now;
    q.exitAt = this.w.now + laterMs;
  }

  /** A COLO thread still winding down holds the migration state: no new migration yet ([migration.c]). */
  migrationBusy(q: SimQemu): boolean {
    return q.broken && q.exitAt > this.w.now;
  }

  /** The process ends. `reset`: its host is up and resets its connections (kill -9); not after a power loss. */
  end(q: SimQemu, reset: boolean, why: string): void {
    if (!q.alive) return;
    this.w.trace(`${q.node}: QEMU ${q.pid} ends (${why})`);
    q.alive = false;
    q.queries = [];
    const h = this.host(q);
    if (h.qemu === q) {
      h.qemu = null;
      h.qemuEndedAt = this.w.now;
      // Its active disk (what a secondary's VM wrote since the last checkpoint) is gone with it.
      h.ownSinceCheckpoint.clear();
    }
    if (h.prepared === q) h.prepared = null;
    if (h.agent && h.agent.attached === q.pid) {
      h.agent.attached = null;
      const boot = h.agent.boot;
      this.w.after(1, () => {
        if (h.agent?.boot === boot) this.w.agents.input(h.name, { t: 'qemu-lost', processGone: true });
      });
    }
    // A mirror towards it fails; a mirror of it ends.
    for (const o of Object.values(this.w.hosts)) if (o.qemu?.mirror?.target === q) o.qemu.mirror.stalledSince ??= -Infinity;
    this.w.client.qemuEnded(q);
    const s = this.session;
    if (s && !s.over && (s.pq === q || s.sq === q)) this.endGone(s, q, reset);
  }

  // ---- the COLO session ----

  startSession(p: NodeName, s: NodeName, pq: SimQemu, sq: SimQemu): void {
    const sess: Session = { id: this.nextSession++, p, s, pq, sq, phase: 'idle', phaseSince: this.w.now, lastCheckpointAt: this.w.now, startedAt: this.w.now, over: false, overAt: 0, replicaFailed: false };
    this.session = sess;
    pq.colo = 'primary';
    sq.colo = 'secondary';
    sq.incoming = false;
    pq.broken = false;
    sq.broken = false;
    pq.migration = 'colo';
    sq.migration = 'colo';
    this.w.hosts[s].ownSinceCheckpoint.clear();
    this.w.trace(`COLO session ${sess.id}: primary ${p} (${pq.pid}), secondary ${s} (${sq.pid})`);
    this.scheduleCheckpoint(sess);
  }

  private scheduleCheckpoint(s: Session): void {
    // The periodic timer, or sooner when outputs differ (x-checkpoint-delay; colo-compare's miscompare).
    const delayMs = this.w.setup.config.replication.checkpointDelayMs;
    this.w.after(this.w.rng.qemu.chance(0.5) ? delayMs : this.w.rng.qemu.range(100, delayMs), () => this.checkpoint(s));
  }

  /** Both ends in COLO and the stream not broken. */
  healthy(s: Session | null = this.session): s is Session {
    return !!s && !s.over && s.pq.alive && s.sq.alive && !s.pq.broken && !s.sq.broken;
  }

  /** The replication link carries nothing between the session's ends (a cut either way, an end's host paused). */
  private silent(s: Session): boolean {
    return this.w.net.cutEitherWay('replication') || this.stopped(s.sq) || this.w.hosts[s.p].paused;
  }

  private checkpoint(s: Session): void {
    if (this.session !== s || s.over || s.phase !== 'idle') return;
    if (this.stopped(s.pq)) return void this.w.after(100, () => this.checkpoint(s));
    // [colo.c] CHECKPOINT_REQUEST, then wait for the reply with the VM running.
    s.phase = 'await-reply';
    s.phaseSince = this.w.now;
    this.tryReply(s);
  }

  /** The secondary answers the checkpoint request, if the link and the secondary let it. */
  private tryReply(s: Session): void {
    if (this.session !== s || s.over || s.phase !== 'await-reply') return;
    if (this.silent(s) || !s.sq.alive) return; // resumed by heal / thaw (a dead end is handled by endGone)
    this.w.after(this.w.rng.qemu.range(0.5, 3), () => {
      if (this.session !== s || s.over || s.phase !== 'await-reply' || this.silent(s)) return;
      // [colo.c] stop the VM, send RAM holding the big lock (patch 0001).
      s.phase = 'sending';
      s.phaseSince = this.w.now;
      const slow = this.w.sched.slowCheckpoints && this.w.rng.qemu.chance(0.15);
      const d = slow ? this.w.rng.qemu.range(1000, 9000) : this.w.rng.qemu.range(15, 120);
      s.pq.bqlUntil = this.w.now + d;
      this.event(s.pq, { t: 'qemu-event', event: 'STOP' });
      this.event(s.sq, { t: 'qemu-event', event: 'STOP' });
      // [P5] the replication's checkpoint fails before anything is sent: COLO ends on the primary.
      if (s.replicaFailed && this.w.sched.replicaErrors === 'p5') return this.breakEnd(s, s.pq, 'a checkpoint failed: a write to the secondary\'s disk had failed [P5]');
      this.w.after(d, () => this.finishCheckpoint(s));
    });
  }

  private finishCheckpoint(s: Session): void {
    if (this.session !== s || s.over || s.phase !== 'sending') return;
    if (this.silent(s)) {
      // A silent link mid-transfer: the send blocks holding the big lock, until the link returns or a yank.
      s.pq.bqlUntil = Infinity;
      return;
    }
    s.pq.bqlUntil = this.w.now;
    this.answerQueries(s.pq);
    // [colo.c] vm_start whatever stopped it: a primary merely paused (not yanked) runs again.
    s.pq.paused = false;
    s.sq.paused = false;
    s.phase = 'idle';
    s.lastCheckpointAt = this.w.now;
    // [replication] the secondary's active and hidden disks are emptied: its disk is the replica from now on.
    this.w.hosts[s.s].ownSinceCheckpoint.clear();
    this.event(s.pq, { t: 'qemu-event', event: 'RESUME' });
    this.event(s.sq, { t: 'qemu-event', event: 'RESUME' });
    this.w.client.checkpointed(s.pq);
    this.w.check.checkpointed(s);
    this.scheduleCheckpoint(s);
  }

  /** The link came back or an end thawed: a stalled checkpoint goes on after TCP's retransmission delay. */
  resumeStalled(stalledMs: number): void {
    const s = this.session;
    if (!s || s.over) return;
    const d = this.w.rng.net.range(200, Math.max(300, Math.min(20_000, stalledMs)));
    this.w.after(d, () => {
      if (this.session !== s || s.over) return;
      if (s.phase === 'await-reply') this.tryReply(s);
      else if (s.phase === 'sending' && s.pq.bqlUntil === Infinity) this.finishCheckpoint(s);
    });
  }

  /**
   * One end of the stream broke by itself (yank, failover) or errored: COLO_EXIT there. `asked`: by its agent (a yank,
   * x-colo-lost-heartbeat), whose command returns before the COLO thread has ended ([late-exit]); a primary's thread
   * waiting for its next checkpoint may also notice a reset late.
   */
  breakEnd(s: Session, q: SimQemu, why: string, asked = false): void {
    // A reset or close that belongs to an earlier session's connection does not touch a later one.
    if (q.broken || !q.alive || this.session !== s) return;
    // A stopped QEMU (frozen, its host paused) sees the reset once it runs again.
    if (this.stopped(q)) return void this.w.after(50, () => this.breakEnd(s, q, why));
    // Asked to end, or a primary between checkpoints (its thread reads nothing then): it may end late ([late-exit]).
    const laterMs = asked || (q === s.pq && s.phase === 'idle') ? this.lateExitMs() : 0;
    this.markBroken(q, laterMs);
    this.w.trace(`${q.node}: COLO_EXIT (${why})${laterMs ? `, sent ${Math.round(laterMs)} ms later` : ''}`);
    if (q === s.pq) {
      q.bqlUntil = Math.min(q.bqlUntil, this.w.now);
      this.answerQueries(q);
      this.w.client.replicaGone(q);
    }
    this.event(q, { t: 'qemu-event', event: 'COLO_EXIT' }, { laterMs });
    this.endSession(s, `${q.node}'s end broke`);
    // The other end hears of it now (link up) or when the link returns.
    const other = q === s.pq ? s.sq : s.pq;
    this.notifyOtherEnd(s, other, `the ${q === s.pq ? 'primary' : 'secondary'} closed the stream`);
  }

  private notifyOtherEnd(s: Session, other: SimQemu, why: string): void {
    if (!other.alive || other.broken) return;
    if (!this.w.net.cutEitherWay('replication')) {
      // [notes4] ~15 ms.
      this.w.after(this.w.rng.qemu.range(10, 25), () => {
        if (!this.w.net.cutEitherWay('replication')) this.breakEnd(s, other, why);
        else this.pendingResets.push({ s, q: other, why });
      });
    } else this.pendingResets.push({ s, q: other, why });
  }

  private endGone(s: Session, q: SimQemu, reset: boolean): void {
    const other = q === s.pq ? s.sq : s.pq;
    this.endSession(s, `${q.node}'s QEMU gone${reset ? '' : ', silently'}`);
    if (!other.alive || other.broken) return;
    if (reset) this.notifyOtherEnd(s, other, `${q.node}'s QEMU is gone (reset)`);
    else {
      // [agents] no reset: the other end waits for ever (a reset comes only if the host comes back).
      if (other === s.pq && s.phase === 'sending') s.pq.bqlUntil = Infinity;
      this.silentEnds.push({ s, q: other, host: q.node });
    }
  }

  private endSession(s: Session, why: string): void {
    if (s.over) return;
    s.over = true;
    s.overAt = this.w.now;
    this.w.trace(`COLO session ${s.id} over (${why})`);
  }

  /** The replication link healed: waiting resets arrive, stalled transfers go on. */
  replicationHealed(cutMs: number): void {
    this.resumeStalled(cutMs);
    for (const r of this.pendingResets.splice(0)) this.w.after(this.w.rng.net.range(200, Math.max(300, Math.min(20_000, cutMs))), () => this.breakEnd(r.s, r.q, r.why));
    this.deliverSilentResets();
  }

  /** An end whose peer vanished learns it by a reset once the peer's host is up and the link is back. */
  deliverSilentResets(): void {
    for (const x of [...this.silentEnds]) {
      const h = this.w.hosts[x.host];
      if (h.up && !h.paused && !this.w.net.cutEitherWay('replication')) {
        this.silentEnds.splice(this.silentEnds.indexOf(x), 1);
        this.w.after(this.w.rng.net.range(200, 5000), () => {
          if (!this.w.net.cutEitherWay('replication')) this.breakEnd(x.s, x.q, 'reset by the peer\'s host');
          else this.silentEnds.push(x);
        });
      }
    }
  }

  /** Yank (out of band): the links to the peer are shut; the stream breaks at this end; a mirror to the peer fails. */
  yank(q: SimQemu): void {
    const s = this.session;
    if (s && !s.over && (s.pq === q || s.sq === q)) this.breakEnd(s, q, 'yanked', true);
    else if (s && (s.pq === q || s.sq === q) && !q.broken) {
      const laterMs = this.lateExitMs();
      this.markBroken(q, laterMs);
      this.event(q, { t: 'qemu-event', event: 'COLO_EXIT' }, { laterMs });
    }
    if (q.mirror) q.mirror.stalledSince ??= -Infinity;
    // A migration paused before its switchover waits on ([live]).
    if (q.migration === 'active') this.migrationFailed(q, 'yanked');
    q.bqlUntil = Math.min(q.bqlUntil, this.w.now);
    this.answerQueries(q);
  }

  /**
   * The outgoing migration fails or is cancelled: a VM that QEMU stopped for its last pass, and that ran before, runs
   * again ([live]); one stopped by a `stop` stays stopped.
   */
  migrationFailed(q: SimQemu, why: string): void {
    q.migration = 'cancelled';
    this.w.trace(`${q.node}: the migration to the new secondary ends (${why})`);
    const ranBefore = q.lastPass?.ranBefore === true;
    q.lastPass = null;
    if (ranBefore) this.runState(q, false);
  }

  /** x-colo-lost-heartbeat: this end leaves COLO and runs on its own. */
  leaveColo(q: SimQemu): void {
    // Out of COLO already: QEMU answers "The feature 'colo' is not enabled", which the runtime takes as done.
    if (q.colo === 'none') return;
    const s = this.session;
    if (s && (s.pq === q || s.sq === q) && !q.broken) this.breakEnd(s, q, 'failover requested', true);
    if (q.colo === 'secondary') {
      // [replication] failover: the active disk (what its VM wrote since the last checkpoint) over the replica.
      const h = this.host(q);
      for (const x of h.ownSinceCheckpoint) h.disk.add(x);
      h.ownSinceCheckpoint.clear();
    }
    q.colo = 'none';
    if (!q.broken) this.markBroken(q, 0);
    if (q.migration === 'colo') q.migration = 'completed';
    // [compare] held answers leave once the node is out of COLO.
    this.w.client.released(q);
  }

  /** The VM's ways out to the LAN do not go through a primary's redirectors (a secondary's f1/f2 are deleted). */
  ownNetwork(q: SimQemu): boolean {
    return !q.objects.has(IDS.secRedirectorIn) && !q.objects.has(IDS.secRedirectorOut);
  }

  /**
   * A VM that may acknowledge client writes now, on its own or as a COLO
   * primary: running guest code, with its own way to the LAN, and its answers
   * not held by colo-compare ([compare]): alone, or a COLO primary whose
   * stream is healthy (its writes replicated) or whose colo-compare is gone.
   */
  writer(q: SimQemu): boolean {
    if (!q.alive || q.paused || q.incoming || !this.ownNetwork(q)) return false;
    if (q.colo === 'none') return true;
    if (q.colo !== 'primary') return false;
    const s = this.session;
    return (this.healthy(s) && s.pq === q) || !q.objects.has(IDS.compare);
  }

  /** A writer that writes alone (nothing replicates its writes). */
  writesAlone(q: SimQemu): boolean {
    if (!this.writer(q)) return false;
    const s = this.session;
    return !(q.colo === 'primary' && this.healthy(s) && s.pq === q);
  }

  // ---- where a write lands ([quorum], [replication]) ----

  /** The node's disk fails this write (the disk-errors fault). */
  private diskFails(h: Host): boolean {
    const e = h.diskErrors;
    return e !== null && this.w.now < e.until && this.w.rng.disk.chance(e.p);
  }

  /**
   * The VM on `q` writes once (a client's request). Returns the write's id,
   * 'error' (the guest gets EIO: nothing acknowledged), or 'blocked' (the
   * write waits on a silent replica).
   */
  write(q: SimQemu): number | 'error' | 'blocked' {
    const h = this.host(q);
    const s = this.session;
    const inSession = !!s && (s.pq === q) && q.colo === 'primary';
    if (q.replication !== 'child' || !inSession) {
      // One child (alone; the replication child detached): it must succeed.
      if (this.diskFails(h)) {
        this.event(q, { t: 'quorum-bad', child: 'local', error: 'Input/output error' });
        return 'error';
      }
      return this.land(h);
    }
    const replicaDead = s.over || q.broken || !s.sq.alive;
    // A silent NBD child blocks the write; a checkpoint's transfer stops the VM ([colo.c]).
    if (!replicaDead && (this.silent(s) || s.phase === 'sending')) return 'blocked';
    // The primary's own disk does not fail writes in COLO here: the agent ends such a QEMU when it hears of it
    // (core.ts, quorumBad), but while no agent hears, the guest would read stale data (see README).
    const localOk = true;
    if (!localOk) this.event(q, { t: 'quorum-bad', child: 'local', error: 'Input/output error' });
    const sh = this.w.hosts[s.s];
    const replicaOk = !replicaDead && !this.diskFails(sh);
    if (!replicaOk) {
      // [P5] said at once, and remembered for the next checkpoint.
      s.replicaFailed = true;
      this.event(q, { t: 'quorum-bad', child: 'replica', error: replicaDead ? 'Connection reset by peer' : 'No space left on device' });
    }
    if (!localOk && !replicaOk) return 'error';
    const id = this.w.nextWriteId();
    if (localOk) h.disk.add(id);
    if (replicaOk) sh.disk.add(id);
    else sh.forwardFailed.add(id);
    // The secondary's VM executed the same request (its active disk), while the stream is healthy.
    if (!replicaDead && this.healthy(s)) sh.ownSinceCheckpoint.add(id);
    this.w.trace(`write ${id} on ${q.node}${localOk ? '' : ' (its own disk failed it)'}${replicaOk ? '' : replicaDead ? '' : ` (${sh.name}'s replica failed it)`}`);
    return id;
  }

  /** A write that lands on one disk. */
  land(h: Host): number {
    const id = this.w.nextWriteId();
    h.disk.add(id);
    return id;
  }
}
