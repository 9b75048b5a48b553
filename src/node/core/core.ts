/**
 * The agent core: where every failover, fence, resync and restart is decided,
 * and why. A pure function of the agent's state and one input:
 *
 *     step(state, input) → { state, effects }
 *
 * No I/O, no clock, no randomness: the runtime (../agent.ts) turns effects
 * into QMP commands, messages and files, and feeds their outcomes back as
 * inputs; the simulator (../../sim/) does the same against modelled QEMUs,
 * networks and faults, millions of times.
 *
 * The evidence, from strongest to weakest:
 * - QEMU itself: COLO_EXIT means this QEMU's checkpoint stream broke (the
 *   secondary sees it ~15 ms after its primary dies, when the link is up and
 *   the peer's host sends a reset: qemu-7.2-colo notes, step 4); checkpoints
 *   (STOP then RESUME) that stop coming mean the stream stalled: a link cut
 *   without a reset, where 7.2's COLO threads wait for ever and no COLO_EXIT
 *   comes (migration/colo.c, colo_do_checkpoint_transaction);
 * - the peer agent's word: its heartbeats say what its QEMU is doing;
 * - one heartbeat path silent while another is heard: with a path over the
 *   replication network, its silence (and no checkpoint meanwhile) is a cut
 *   replication link, which no COLO_EXIT would report (replicationCut);
 * - silence: no heartbeat within the timeout. Silence alone never makes a
 *   failover: a dead agent next to a healthy VM is not a dead VM;
 * - the witness: only the holder of its lease may begin to write alone, and
 *   it refuses the lease to a disk older than the newest epoch it recorded.
 *
 * Rules of the road:
 * - a node begins to write alone (takeover, primary failover, restart) only
 *   while it holds the lease (with a witness), and only after its new disk
 *   epoch is recorded at the witness and on its own disk;
 * - a disk is only ever resynced from a disk that is newer or the same;
 * - a fence is never for ever: a fenced node comes back when the lease is
 *   its again, or is resynced, or takes over when its primary is gone;
 * - every procedure records how far it got; a retry continues from there,
 *   with back-off;
 * - every decision carries its reason, for `status` and the logs.
 */
import type { Epoch } from '../../pair/epoch.js';
import { compareEpochs, epochEquals, formatEpoch, mayResyncTowards, nextEpoch } from '../../pair/epoch.js';
import type { Heartbeat, LeaseReply, PeerReply, PeerRequestBody } from '../wire.js';
import { planted } from '../mutants.js';
import { PROBE_TIMEOUT_MS, type Attempts, type CoreConfig, type CoreState, type CoreStatus, type Effect, type Input, type PeerLinks, type Pending, type ProbeWhat, type Procedure, type QemuFound, type ReplicaNote, type Role, type Transition, type Work } from './types.js';

/** A broken invariant: the core's own logic is wrong. The runtime stops the agent (the QEMUs run on); the simulator reports the seed. */
export class InvariantError extends Error {
  constructor(what: string) {
    super(`invariant broken: ${what}`);
    this.name = 'InvariantError';
  }
}

function invariant(cond: unknown, what: string): asserts cond {
  if (!cond) throw new InvariantError(what);
}

// ---- bounds ----

/** Decisions kept for status. */
const DECISIONS_KEPT = 20;
/** Requests awaiting a reply; more means something is very wrong. */
const PENDING_MAX = 32;
/** Heartbeats remembered for their round trip. */
const HB_SENT_KEPT = 64;
/** The watchdog probes our QEMU this often. */
export const WATCHDOG_INTERVAL_MS = 500;
/**
 * A probe of the peer whose result never came (its I/O answers within the driver's PROBE_TIMEOUT_MS, so one was
 * lost: an agent restarted under it, a bug) is sent again after this; a result is believed for as long.
 */
const PROBE_ANSWER_MS = 1000;
/** A silent secondary whose QEMU answered a probe this recently still counts as protected (isProtected). */
const PROTECTED_PROBE_MS = 2000;
/** A lease reply this late still tells us something (the grant counts from when we asked). */
const LATE_REPLY_MS = 10_000;
/** How long the survivor waits for the peer to start a new secondary, and to take it over. */
export const PREPARE_TIMEOUT_MS = 30_000;
const HANDOVER_TIMEOUT_MS = 15_000;
/** Back-off of failed procedures: failovers retry soon, resyncs and restarts more slowly. */
const BACKOFF = {
  failover: { firstMs: 200, maxMs: 5_000 },
  reprotect: { firstMs: 2_000, maxMs: 30_000 },
  // At most 10 s: while the VM runs nowhere, a restart that keeps failing is tried again well within the 45 s the
  // simulator allows (focus schedule 1,302 of take-back-retried-as-resync: five failed attempts, then 30 s waits).
  restart: { firstMs: 2_000, maxMs: 10_000 },
} as const;

/**
 * How far two hosts' monotonic clocks may drift apart, as a rate (each may run
 * up to this much fast or slow: NTP slews a clock by at most 500 ppm). A
 * lease is counted from when we asked, and shortened by the drift of both
 * clocks, so that our view of it ends before the witness's.
 */
export const CLOCK_DRIFT_MAX = 0.001;

// ---- derived timings ----

/** After start, how long the absence of the peer's word and of a lease answer is no evidence. */
export function startGraceMs(cfg: CoreConfig): number {
  return Math.max(2 * cfg.heartbeatTimeoutMs, cfg.leaseMs) + 1000;
}

/**
 * How long a node whose peer is silent waits before it may restart the VM
 * from its own disk: long enough for a live secondary it cannot hear to have
 * noticed the stall and taken the lease (which then refuses us).
 */
export function restartSilenceMs(cfg: CoreConfig): number {
  return cfg.stallMs + 2 * cfg.leaseMs + cfg.heartbeatTimeoutMs + 1000;
}

/**
 * How long we try to attach to our QEMU before we end it. QMP's negotiation
 * needs QEMU's main loop, which a checkpoint on a silent link holds for up to
 * the checkpoint bound; past that and the hung bound, a QEMU we cannot attach
 * can be neither watched nor stopped, and might come back as a second writer.
 */
export function attachBoundMs(cfg: CoreConfig): number {
  return cfg.checkpointTimeoutMs + cfg.hungMs;
}

// ---- construction ----

/**
 * `disk`: what our disk's record says (an unknown epoch when it is missing or unreadable), and the note of what our
 * primary said it lacks (ReplicaNote), if one was written: remembered as said at our start.
 */
export function initCore(cfg: CoreConfig, now: number, boot: string, disk: { epoch: Epoch | undefined; pending: Epoch | undefined; note?: ReplicaNote }): CoreState {
  const note = planted('replica-note-forgotten') ? undefined : disk.note;
  invariant(cfg.paths >= 1, 'at least one heartbeat path');
  invariant(cfg.name !== cfg.peer, 'the peer is another node');
  return {
    cfg,
    now,
    startedAt: now,
    firstFoundAt: null,
    boot,
    role: 'down',
    roleSince: now,
    fence: null,
    qemu: {
      state: 'attaching',
      attachingSince: now,
      oob: false,
      coloExitAt: null,
      lastCheckpointAt: now,
      checkpointSeen: false,
      checkpointSince: null,
      paused: false,
      procedureEndedAt: now,
      inband: null,
      oobProbe: null,
      lastInbandAt: now,
      lastOobAt: now,
      yankedAt: null,
      killedAt: null,
      leftovers: false,
      replicaBadAt: null,
      replicaShort: false,
    },
    disk: { epoch: disk.epoch, pending: disk.pending, persisting: null, sizeBytes: cfg.diskSizeBytes, missedWriteAt: note?.missedWrite ? now : null, forwardedWriteFailedAt: note?.forwardedWriteFailed ? now : null },
    peer: { paths: Array.from({ length: cfg.paths }, () => ({ up: false, lastHeardAt: null, lastAckAt: null })), boot: null, seq: 0, hb: null, hbAt: null, since: null, vmStoppedSince: null, rttMs: null, heardAgainAt: null, probe: null, probeResult: null },
    lease: { until: 0, nextAskAt: now, nextQueryAt: now, lastAnswerAt: null, lastRefusal: null, newest: null, releasedAt: -Infinity },
    work: null,
    attempts: {},
    pending: [],
    hbSeq: 1,
    hbSent: [],
    nextHeartbeatAt: now,
    nextId: 1,
    decisions: [],
    waiting: null,
    handover: null,
    resyncAskedAt: null,
  };
}

/** A copy of the state that step() may change; the caller's state is never touched. */
function draft(p: CoreState): CoreState {
  // Every field named (the compiler checks that none is missing): a spread of the whole state was a fifth of the
  // simulator's time.
  return {
    cfg: p.cfg,
    now: p.now,
    startedAt: p.startedAt,
    firstFoundAt: p.firstFoundAt,
    boot: p.boot,
    role: p.role,
    roleSince: p.roleSince,
    hbSeq: p.hbSeq,
    nextHeartbeatAt: p.nextHeartbeatAt,
    nextId: p.nextId,
    waiting: p.waiting,
    handover: p.handover,
    resyncAskedAt: p.resyncAskedAt,
    pending: p.pending,
    hbSent: p.hbSent,
    decisions: p.decisions,
    attempts: p.attempts,
    fence: p.fence && { ...p.fence },
    qemu: { ...p.qemu },
    disk: { ...p.disk },
    peer: { ...p.peer },
    lease: { ...p.lease },
    work: p.work && ({ ...p.work } as Work),
    // attempts, peer.paths, pending, hbSent and decisions are shared with the previous state, and copied where they change: most steps
    // change none of them.
  };
}

interface Ctx {
  s: CoreState;
  fx: Effect[];
}

// ---- the step ----

export function step(prev: CoreState, input: Input): Transition {
  invariant(input.now >= prev.now, `time goes forward (${input.now} < ${prev.now})`);
  const s = draft(prev);
  s.now = input.now;
  const ctx: Ctx = { s, fx: [] };
  absorb(ctx, input);
  if (input.t === 'tick') periodic(ctx);
  if (!s.work) act(ctx);
  // After the decision, so that the peer hears what we are doing now. Before we know what our QEMU is, we say
  // nothing: silence is no evidence, a wrong word would be.
  if (input.t === 'tick' && s.now >= s.nextHeartbeatAt && !(s.qemu.state === 'attaching' && s.role === 'down')) sendHeartbeat(ctx);
  checkInvariants(prev, s);
  return { state: s, effects: ctx.fx };
}

/** Invariants between two consecutive states. */
function checkInvariants(prev: CoreState, s: CoreState): void {
  // A disk's epoch never goes back (it may move to another run only through a resync, never back within one).
  if (prev.disk.epoch && s.disk.epoch && prev.disk.epoch.run === s.disk.epoch.run) {
    invariant(s.disk.epoch.gen >= prev.disk.epoch.gen, `our disk epoch went back from ${formatEpoch(prev.disk.epoch)} to ${formatEpoch(s.disk.epoch)}`);
  }
  invariant(s.pending.length <= PENDING_MAX, 'pending requests are bounded');
  invariant(s.decisions.length <= DECISIONS_KEPT, 'decisions are bounded');
  invariant(s.role !== 'fenced' || s.fence !== null, 'a fenced node knows why');
  invariant(s.role === 'fenced' || s.fence === null, 'only a fenced node has a fence');
  invariant(!(s.role === 'down' && s.qemu.state === 'alive' && s.work?.kind !== 'join'), 'a node with a live QEMU is not down');
}

// ---- small helpers ----

function newId(s: CoreState): string {
  return `${s.boot.slice(0, 8)}-${s.nextId++}`;
}

function emit(ctx: Ctx, e: Effect): void {
  ctx.fx.push(e);
}

function log(ctx: Ctx, level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void {
  emit(ctx, { t: 'log', level, msg, fields });
}

function decide(ctx: Ctx, action: string, why: string): void {
  const s = ctx.s;
  s.decisions = [...s.decisions.slice(s.decisions.length >= DECISIONS_KEPT ? 1 : 0), { at: s.now, action, why }];
  s.waiting = null;
  emit(ctx, { t: 'decision', action, why });
}

function setRole(s: CoreState, role: Role): void {
  if (s.role === role) return;
  s.role = role;
  s.roleSince = s.now;
  if (role !== 'fenced') s.fence = null;
  // A new role is a new episode: failovers of the old one start afresh, and a node newly alone resyncs at once.
  forget(s, 'primary-failover', 'takeover', 'fence', 'unfence');
  if (role === 'alone') forget(s, 'reprotect');
  else s.resyncAskedAt = null;
}

/**
 * Within the start's grace: after the agent started, and again after it first attached to its QEMU, since it says
 * nothing before it knows what that QEMU is. An attach that took long (a QEMU in a slow checkpoint answers no QMP)
 * left no time for the peer to hear us or for a lease: the simulator's restart-kept (soak seed 12,607,131: attached
 * 2.1 s after its start, the restarted primary fenced at once, its lease run out and the secondary not yet hearing it).
 */
export function starting(s: CoreState): boolean {
  const graceMs = startGraceMs(s.cfg);
  if (s.now - s.startedAt < graceMs) return true;
  return s.firstFoundAt !== null && s.now - s.firstFoundAt < graceMs && !planted('grace-from-start-only');
}

/** The peer was heard on some path within the heartbeat timeout (or we just started and never heard it). */
export function peerFresh(s: CoreState): boolean {
  if (s.peer.paths.some((p) => p.lastHeardAt !== null && s.now - p.lastHeardAt < s.cfg.heartbeatTimeoutMs)) return true;
  return starting(s) && s.peer.paths.every((p) => p.lastHeardAt === null);
}

/** The peer's newest heartbeat, if it is still current. */
function peerWord(s: CoreState): Heartbeat | null {
  return peerFresh(s) ? s.peer.hb : null;
}

function lastHeard(s: CoreState): number | null {
  let t: number | null = null;
  for (const p of s.peer.paths) if (p.lastHeardAt !== null && (t === null || p.lastHeardAt > t)) t = p.lastHeardAt;
  return t;
}

/**
 * The witness knows a newer epoch of our run than our disk's (and it is not
 * one we began ourselves and are still committing): our data is stale; we
 * may only be resynced. Judged against our current epoch, so it ends when we
 * are resynced (or commit the epoch the witness recorded for us).
 */
export function staleDisk(s: CoreState): boolean {
  const newest = s.lease.newest;
  const ours = s.disk.epoch;
  if (!s.cfg.witness || !newest || !ours || newest.run !== ours.run) return false;
  if (epochEquals(s.disk.pending, newest)) return false;
  const o = compareEpochs(ours, newest);
  return o === 'older' || o === 'divergent';
}

/** The witness's newest epoch is the one we asked it to record (still pending on our disk), not our disk's committed one. */
export function recordedNotOnDisk(s: CoreState): boolean {
  const newest = s.lease.newest;
  return s.cfg.witness && newest !== null && newest !== undefined && epochEquals(s.disk.pending, newest) && !epochEquals(s.disk.epoch, newest) && !planted('unfence-before-recorded-epoch-on-disk');
}

export function leaseValid(s: CoreState): boolean {
  return !s.cfg.witness || s.lease.until > s.now;
}

/**
 * A VM of ours in COLO (a primary's) must stop: the lease is not ours for a stop margin more, and the secondary does
 * not vouch for us (it hears us, so it does not take over). Past the start's grace only.
 */
export function leaseLostUnvouched(s: CoreState): boolean {
  if (!s.cfg.witness || starting(s) || leaseAhead(s)) return false;
  return !(peerFresh(s) && s.peer.hb?.hearsPeer === true);
}

/**
 * A probe speaks only for the silence it was sent in: one sent before the peer's newest heartbeat says nothing of
 * the silence since (an "alive" from a moment of lag would otherwise hold off the probe of a host lost just after).
 */
function probeInSilence(s: CoreState, sentAt: number): boolean {
  const heard = lastHeard(s);
  return heard === null || sentAt >= heard;
}

/** A probe of ours that asks `what` is out, for the current silence, and its result may still come. */
function probeUnderWay(s: CoreState, what: ProbeWhat): boolean {
  const p = s.peer.probe;
  return p !== null && p.what === what && s.now - p.sentAt < PROBE_ANSWER_MS && probeInSilence(s, p.sentAt);
}

/** The result of our newest probe that asked `what`, if it is of the current silence and recent enough to go by. */
function probeResult(s: CoreState, what: ProbeWhat, withinMs = PROBE_ANSWER_MS): { alive: boolean } | null {
  const r = s.peer.probeResult;
  return r !== null && r.what === what && s.now - r.at < withinMs && probeInSilence(s, r.sentAt) ? r : null;
}

/**
 * The silence after which we probe the peer: a probe's bound before the heartbeat timeout, so that its answer is in
 * when the peer counts as silent (and we act on it then, not a probe's bound later); never before two heartbeats
 * were missed.
 */
export function probeSilenceMs(cfg: CoreConfig): number {
  return Math.max(cfg.heartbeatTimeoutMs - PROBE_TIMEOUT_MS, 2 * cfg.heartbeatIntervalMs);
}

/**
 * While the peer still counts as heard: probe it ahead of the heartbeat timeout once its heartbeats have paused
 * for probeSilenceMs, unless a probe of this silence is out or answered. Nothing is decided on the answer until
 * the peer is silent (primaryFailoverReason, secondaryAction).
 */
function probeAhead(s: CoreState, what: ProbeWhat, why: string): Action | null {
  const heard = lastHeard(s);
  if (heard === null || s.now - heard < probeSilenceMs(s.cfg) || planted('probe-at-heartbeat-timeout')) return null;
  if (probeUnderWay(s, what) || probeResult(s, what)) return null;
  return { action: 'probe', what, why: `${why} (no heartbeat for ${ms(s.now - heard)}: probing ahead of the heartbeat timeout)` };
}

/**
 * The lease is ours for a while yet: for a stop margin (a quarter of a lease)
 * more. A VM that writes alone is stopped once less is left, so that it has
 * stopped (a tick, a QMP stop) before the lease can be anybody else's; and
 * one is let write alone only with more than that left. A renewed lease
 * always has three quarters left.
 */
export function leaseAhead(s: CoreState): boolean {
  return !s.cfg.witness || s.lease.until - s.now > leaseStopMarginMs(s.cfg);
}

export function leaseStopMarginMs(cfg: CoreConfig): number {
  return cfg.leaseMs / 4;
}

/**
 * Our VM may run alone now (a stopped one be let run again): with a witness,
 * only while the lease is ours, and never while our disk's epoch is unknown.
 * A VM that a procedure stopped and that would run again otherwise begins to
 * write alone without the lease, or on a disk nobody can vouch for.
 */
function mayRunAlone(s: CoreState): boolean {
  return mayBeginAlone(s) || planted('take-back-runs-vm-without-lease');
}

/** mayRunAlone, as the procedures' runtime asks it (node/procedures.ts: a live resume's switchover). */
export function mayBeginAlone(s: CoreState): boolean {
  return leaseAhead(s) && s.disk.epoch !== undefined;
}

/**
 * Our QEMU's checkpoint stream stalled: no checkpoint for too long, or one
 * that takes too long. A checkpoint may take up to checkpointTimeoutMs (all
 * of RAM the first time) while the peer's agent is heard; with every
 * heartbeat path silent, one under way is no reason to wait longer than for
 * the next checkpoint: the peer's host may be gone in the middle of it (then
 * the stream never ends by itself, and our QEMU's main loop waits on it).
 */
export function stalled(s: CoreState): { ms: number; inCheckpoint: boolean } | null {
  if (s.qemu.state !== 'alive' || s.qemu.coloExitAt !== null || !(s.role === 'primary' || s.role === 'secondary')) return null;
  const sinceLast = s.now - s.qemu.lastCheckpointAt;
  if (s.qemu.checkpointSince !== null) {
    const ms = s.now - s.qemu.checkpointSince;
    if (ms > s.cfg.checkpointTimeoutMs) return { ms, inCheckpoint: true };
    return !peerFresh(s) && sinceLast > stallMs(s) ? { ms, inCheckpoint: true } : null;
  }
  return sinceLast > stallMs(s) ? { ms: sinceLast, inCheckpoint: false } : null;
}

/**
 * Stalled only by the rule for a silent peer: a checkpoint under way past the stall bound, but within its own. A
 * peer whose host (or QEMU) still answers may only be restarting its agent while the checkpoint is slow; each side
 * then gives the checkpoint its own bound (secondaryAction, primaryFailoverReason).
 */
function slowCheckpointOfSilentPeer(s: CoreState, st: ReturnType<typeof stalled>): st is NonNullable<ReturnType<typeof stalled>> {
  return st !== null && st.inCheckpoint && st.ms <= s.cfg.checkpointTimeoutMs;
}

function stallMs(s: CoreState): number {
  return planted('stall-bound-x3') ? 3 * s.cfg.stallMs : s.cfg.stallMs;
}

function attemptsOf(s: CoreState, kind: string): Attempts {
  return s.attempts[kind] ?? { failures: 0, notBefore: 0, lastError: null, stepsDone: 0 };
}

function backoffOf(kind: string): { firstMs: number; maxMs: number } {
  return kind === 'reprotect' ? BACKOFF.reprotect : kind === 'restart' ? BACKOFF.restart : BACKOFF.failover;
}

/** Records a failed attempt: the next one waits (doubling), and continues from `stepsDone`. */
function failed(ctx: Ctx, kind: string, error: string, stepsDone?: number): void {
  const s = ctx.s;
  const a = attemptsOf(s, kind);
  const b = backoffOf(kind);
  const waitMs = Math.min(b.maxMs, b.firstMs * 2 ** a.failures);
  setAttempts(s, kind, { ...a, failures: a.failures + 1, notBefore: s.now + waitMs, lastError: error, stepsDone: stepsDone ?? a.stepsDone });
  log(ctx, 'error', `${kind} failed: ${error}`, { retryInMs: waitMs, stepsDone: stepsDone ?? a.stepsDone });
}

function succeeded(s: CoreState, kind: string): void {
  forget(s, kind);
}

/** The attempts record is shared with the previous state: replaced, never changed. */
function setAttempts(s: CoreState, kind: string, a: Attempts): void {
  s.attempts = { ...s.attempts, [kind]: a };
}

function forget(s: CoreState, ...kinds: string[]): void {
  if (!kinds.some((k) => k in s.attempts)) return;
  const next = { ...s.attempts };
  for (const k of kinds) delete next[k];
  s.attempts = next;
}

function mayTry(s: CoreState, kind: string): boolean {
  return s.now >= attemptsOf(s, kind).notBefore;
}

function addPending(ctx: Ctx, p: Pending): void {
  const s = ctx.s;
  if (s.pending.length >= PENDING_MAX) {
    // Room first from what is past its deadline, then from lease requests (renewals): a request a work waits for stays.
    const i = Math.max(0, [s.pending.findIndex((x) => x.expired), s.pending.findIndex((x) => x.what === 'lease')].find((k) => k >= 0) ?? 0);
    const dropped = s.pending[i]!;
    s.pending = s.pending.filter((_, k) => k !== i);
    log(ctx, 'warn', 'too many requests awaiting replies: forgot one', { id: dropped.id, what: dropped.what });
  }
  s.pending = [...s.pending, p];
}

function takePending(s: CoreState, id: string): Pending | undefined {
  const i = s.pending.findIndex((p) => p.id === id);
  if (i < 0) return undefined;
  const p = s.pending[i];
  s.pending = s.pending.filter((_, k) => k !== i);
  return p;
}

function heartbeat(s: CoreState): Heartbeat {
  const st = s.qemu.state;
  return {
    t: 'hb',
    boot: s.boot,
    seq: s.hbSeq,
    role: s.role,
    qemu: st === 'alive' ? 'alive' : st === 'gone' ? 'dead' : 'unknown',
    colo: s.qemu.coloExitAt !== null ? 'exited' : 'ok',
    hearsPeer: s.peer.paths.some((p) => p.lastHeardAt !== null && s.now - p.lastHeardAt < s.cfg.heartbeatTimeoutMs),
    disk: s.disk.epoch ?? null,
    checkpointAgeMs: s.role === 'primary' || s.role === 'secondary' ? Math.round(s.now - s.qemu.lastCheckpointAt) : null,
    busy: s.work ? s.work.kind : null,
    replicaExact: s.qemu.replicaBadAt === null,
    replicaShort: s.qemu.replicaShort,
  };
}

function sendHeartbeat(ctx: Ctx): void {
  const s = ctx.s;
  const hb = heartbeat(s);
  s.hbSent = [...s.hbSent.slice(s.hbSent.length >= HB_SENT_KEPT ? 1 : 0), { seq: hb.seq, at: s.now }];
  s.hbSeq++;
  s.nextHeartbeatAt = s.now + s.cfg.heartbeatIntervalMs;
  emit(ctx, { t: 'send-peer', path: 'all', msg: hb });
}

// ---- inputs ----

function absorb(ctx: Ctx, input: Input): void {
  const s = ctx.s;
  switch (input.t) {
    case 'tick':
      return;
    case 'qemu-found':
      return found(ctx, input.found);
    case 'qemu-event':
      return qemuEvent(ctx, input.event, input.ageMs ?? 0);
    case 'qemu-lost':
      return qemuLost(ctx, input.processGone);
    case 'quorum-bad':
      return quorumBad(ctx, input.child, input.error);
    case 'qemu-answer':
      if (s.qemu.inband?.id === input.id) {
        const sentAt = s.qemu.inband.sentAt;
        s.qemu.inband = null;
        s.qemu.lastInbandAt = s.now;
        if (input.paused !== undefined) runState(ctx, input.paused, sentAt);
      } else if (s.qemu.oobProbe?.id === input.id) {
        s.qemu.oobProbe = null;
        s.qemu.lastOobAt = s.now;
      }
      return;
    case 'peer-link': {
      if (s.peer.paths[input.path]) s.peer.paths = s.peer.paths.map((x, i) => (i === input.path ? { ...x, up: input.up } : x));
      return;
    }
    case 'peer-message':
      return peerMessage(ctx, input.path, input.msg);
    case 'witness-reply': {
      const r = input.reply;
      if (r.t === 'released') {
        takePending(s, r.re);
        return;
      }
      if (r.t === 'state') {
        if (!takePending(s, r.re)) return;
        s.lease.lastAnswerAt = s.now;
        if (r.newest && r.newest.run === s.disk.epoch?.run) s.lease.newest = r.newest;
        return;
      }
      return leaseReply(ctx, r);
    }
    case 'proc-progress':
      return procProgress(ctx, input.id, input.stepsDone, input.step, input.mirror);
    case 'proc-done':
      return procDone(ctx, input.id, input.pid);
    case 'proc-failed':
      return procFailed(ctx, input.id, input.stepsDone, input.error);
    case 'disk-persisted':
      return diskPersisted(ctx, input.id, input.ok, input.error);
    case 'probe-result':
      if (s.peer.probe?.id === input.id) {
        s.peer.probeResult = { alive: input.alive, at: s.now, sentAt: s.peer.probe.sentAt, what: s.peer.probe.what };
        s.peer.probe = null;
      }
      return;
    case 'operator-resync':
      // Only a node that runs the VM alone resyncs; the daemon refuses the request elsewhere, so this is a race: ignored.
      if (s.role !== 'alone') return;
      s.resyncAskedAt = s.now;
      forget(s, 'reprotect');
      return;
  }
}

/** The runtime (re)attached to our QEMU, or found none: what it is decides our role. */
function found(ctx: Ctx, f: QemuFound): void {
  const s = ctx.s;
  const q = s.qemu;
  s.firstFoundAt ??= s.now;
  q.inband = null;
  q.oobProbe = null;
  q.lastInbandAt = s.now;
  q.lastOobAt = s.now;
  q.yankedAt = null;
  q.oob = f.oob;
  q.leftovers = false;
  q.killedAt = null;
  if (f.diskSizeBytes !== undefined && f.diskSizeBytes > 0) s.disk.sizeBytes = f.diskSizeBytes;
  if (!f.running) {
    q.state = 'gone';
    q.paused = false;
    q.coloExitAt = null;
    setRole(s, 'down');
    return;
  }
  q.state = 'alive';
  q.paused = f.runState === 'paused';
  // QUORUM_REPORT_BAD is said once, to the monitors connected then: what a replica missed while no agent was attached
  // is not known here (QEMU keeps no count of a quorum child's failures: query-blockstats counts per device).
  q.replicaBadAt = null;
  q.replicaShort = false;
  // We do not know when its last checkpoint was: the stall clock starts now, and protection waits for one.
  q.lastCheckpointAt = s.now;
  q.checkpointSeen = false;
  q.checkpointSince = null;
  const was = s.role;
  if (s.work?.kind === 'join') {
    // The new secondary we adopt (adopt-secondary reports it before it is done).
    if (f.colo === 'secondary') {
      q.coloExitAt = null;
      setRole(s, 'secondary');
    }
    return;
  }
  if (f.runState === 'inmigrate') {
    // A new secondary of a resync nobody finished (our agent died in it): nobody will use it.
    q.state = 'gone';
    setRole(s, 'down');
    decide(ctx, 'kill', 'found a new secondary that no resync uses any more');
    emit(ctx, { t: 'kill-qemu', why: 'a prepared secondary left by an unfinished resync' });
    return;
  }
  if (f.colo === 'primary') {
    q.coloExitAt = null;
    setRole(s, 'primary');
  } else if (f.colo === 'secondary') {
    q.coloExitAt = null;
    setRole(s, 'secondary');
  } else if (f.resumeLeftovers) {
    // A resync of ours stopped half-way: the VM is ours alone; take the rest back. Found while a resync of ours runs
    // (attached again during it), they are that resync's, under way (soak seed 3,092,485: taken for leftovers, a
    // resync that had just protected the pair was taken back).
    q.coloExitAt = null;
    q.leftovers = s.work?.kind !== 'reprotect';
    setRole(s, 'alone');
  } else if (f.replicationChild || f.secondaryFilters) {
    // Out of COLO with the failover procedure still to run (or half-run).
    q.coloExitAt = s.now;
    if (q.paused) fenceAs(s, f.replicationChild ? 'primary' : 'secondary', 'found our VM stopped out of COLO');
    else setRole(s, f.replicationChild ? 'primary' : 'secondary');
  } else if (q.paused) {
    fenceAs(s, was === 'primary' || was === 'secondary' ? was : 'alone', 'found our VM stopped', { foundStopped: true });
  } else {
    q.coloExitAt = null;
    setRole(s, 'alone');
  }
}

function fenceAs(s: CoreState, from: 'primary' | 'secondary' | 'alone', why: string, o: { foundStopped?: boolean } = {}): void {
  setRole(s, 'fenced');
  s.fence = { why, from, at: s.now, foundStopped: o.foundStopped ?? false };
}

/**
 * What QEMU says of our VM's run state (the watchdog's query-status), against
 * what we believe. A stop or cont whose reply never came (its step timed out,
 * so we took the step as not done) may take effect later: a VM we believe
 * running is found stopped, or one we stopped runs. Believed only while no
 * procedure of ours is under way and the query went out after the last one
 * ended.
 * - stopped, out of COLO: as good as fenced; the fence's rules let it run again;
 * - running while we are fenced: stopped again at once (a second writer otherwise).
 */
function runState(ctx: Ctx, paused: boolean, sentAt: number): void {
  const s = ctx.s;
  const q = s.qemu;
  if (s.work !== null || sentAt <= q.procedureEndedAt || paused === q.paused) return;
  if (paused) {
    if (!(s.role === 'alone' || (s.role === 'primary' && q.coloExitAt !== null))) return;
    log(ctx, 'warn', 'our VM is stopped although we let it run (a stop that took effect after its step gave up)');
    q.paused = true;
    fenceAs(s, s.role, 'our VM was found stopped', { foundStopped: true });
    emit(ctx, { t: 'record', event: 'fence', detail: { node: s.cfg.name, from: s.fence!.from, reason: s.fence!.why } });
    sendHeartbeat(ctx);
    return;
  }
  if (s.role !== 'fenced') return;
  const why = 'our VM runs although we stopped it (a cont that took effect after its step gave up): stopping it again';
  decide(ctx, 'fence', why);
  beginSimple(ctx, 'fence', why, { kind: 'fence', yank: null });
}

/** The oldest a QMP event is taken to be: a clock that jumped does not date a checkpoint back further. */
const EVENT_AGE_MAX_MS = 60_000;

function qemuEvent(ctx: Ctx, event: 'STOP' | 'RESUME' | 'COLO_EXIT' | 'SHUTDOWN', ageMs: number): void {
  const s = ctx.s;
  const q = s.qemu;
  if (q.state !== 'alive') return;
  // When QEMU sent it, not when we read it: a checkpoint that began before our host paused whole is no checkpoint
  // under way now. No simulated schedule needs this alone (soak seed 2,072,347 first looked like one: read at the
  // resume, such a STOP made a stream stalled for 17.9 s look alive, but its COLO_EXIT follows at once), so a unit
  // test holds it instead of a mutant.
  const at = s.now - Math.min(Math.max(0, ageMs), EVENT_AGE_MAX_MS);
  const resync = s.work?.kind === 'reprotect' ? s.work : null;
  if (event === 'STOP') {
    // In COLO, or entering it again (a resume waits for its first checkpoint): when a checkpoint began.
    if (((s.role === 'primary' || s.role === 'secondary') && q.coloExitAt === null) || resync?.phase === 'resuming') q.checkpointSince = at;
  } else if (event === 'RESUME') {
    // The resume stopped our VM; the new COLO session runs it again.
    if (resync?.phase === 'resuming' && q.checkpointSince !== null) resync.coloSince ??= at;
    if (q.checkpointSince !== null) {
      q.lastCheckpointAt = Math.max(at, q.checkpointSince);
      q.checkpointSeen = true;
      // A checkpoint after a replica write failed makes the secondary's disk short of it: ours as a primary, or our
      // resume's once its COLO session runs (soak seed 12,002,203, without P5: a write failed on the new secondary's
      // replica during the resume, a checkpoint followed, and the resume ended as the primary fenced (the witness
      // down); the secondary, never told its disk was short, took over without the write).
      const ours = s.role === 'primary' || (resync?.phase === 'resuming' && resync.coloSince !== null && !planted('resume-checkpoint-not-short'));
      if (q.replicaBadAt !== null && ours) q.replicaShort = true;
    }
    q.checkpointSince = null;
  } else if (event === 'COLO_EXIT') {
    // QEMU sends COLO_EXIT as a COLO thread ends, which a yank or x-colo-lost-heartbeat only asks for: after a failover,
    // the old session's can come once a resync began (seen on real VMs). No migration starts before it is sent, and a
    // monitor sends its events in order: during a resync, only one after the new session's RESUME is the new session's.
    if (resync && (resync.phase === 'asking' || (resync.phase === 'resuming' && resync.coloSince === null))) {
      return log(ctx, 'info', 'COLO_EXIT of the COLO session before this resync (its thread ended late): not the new session\'s');
    }
    // The first exit counts; but one the old session left (before this resync's new session began) is not this one's
    // (hand-written schedule of resume-forgets-its-colo-exit, a guest idle on the disk: the new session's exit, kept
    // out by the old one's, went unrecorded, and the resume's end, dropping the old one, said PROTECTED).
    const oldSessions = resync?.coloSince !== null && resync?.coloSince !== undefined && q.coloExitAt !== null && q.coloExitAt < resync.coloSince;
    if (q.coloExitAt === null || oldSessions) {
      q.coloExitAt = s.now;
      log(ctx, 'warn', 'COLO_EXIT: our checkpoint stream is gone');
    }
    q.checkpointSince = null;
  }
}

/**
 * QUORUM_REPORT_BAD (block/quorum.c): with vote-threshold=1 a write that
 * failed on one child of our disk's quorum still completed on the other, and
 * the guest may have acknowledged it.
 * - the replication child (the secondary's replica: ENOSPC, EIO, a broken
 *   NBD connection): the secondary's disk is no longer an exact copy, so it
 *   must never take over. The links to it are yanked at once, so that no
 *   checkpoint makes the missing write the secondary's state for good (until
 *   a checkpoint its own VM's write covers it), and we carry on alone under
 *   a new epoch (primaryFailoverReason), which makes its disk stale at the
 *   witness; the resync then makes it exact again;
 * - our own disk, while the replica took the write: the secondary's disk is
 *   the exact one; our QEMU is ended and the secondary takes over.
 * Either way we stop calling the pair protected. Outside COLO there is one
 * child: the write failed, and the guest got the error.
 *
 * Stock QEMU's replication reports a replica's failed write done, so this
 * comes only from a flush that fails too; lockstep's QEMU (patch 0005)
 * reports the write itself at once, and also fails the next checkpoint,
 * which ends COLO (COLO_EXIT) before a replica can be made short. The
 * short-replica rules that follow from this one are thus defence in depth
 * (their mutants are caught without the checkpoint half: the simulator's
 * replicaErrors 'reported').
 */
function quorumBad(ctx: Ctx, child: 'replica' | 'local', error: string): void {
  const s = ctx.s;
  const q = s.qemu;
  // Our quorum has a replication child as a primary, and from the migration on in a resume of ours.
  const resuming = s.work?.kind === 'reprotect' && s.work.phase === 'resuming';
  if (q.state !== 'alive' || !(s.role === 'primary' || resuming)) return log(ctx, 'warn', `QUORUM_REPORT_BAD of our ${child === 'replica' ? 'replication child' : 'disk'}: ${error}`);
  if (child === 'local') {
    // A new secondary not yet ours to hand the VM to (its agent takes it over at the end of the resume): later.
    if (resuming) return log(ctx, 'error', `our disk failed a write during a resync: ${error}`);
    if (q.coloExitAt !== null || q.replicaBadAt !== null || planted('ignore-replica-write-errors')) return log(ctx, 'error', `our disk failed a write: ${error}`);
    return killQemu(ctx, `our disk failed a write (${error}) that the secondary's replica took: the secondary's disk is the exact one`);
  }
  if (q.replicaBadAt !== null || planted('ignore-replica-write-errors')) return;
  q.replicaBadAt = s.now;
  log(ctx, 'error', `QUORUM_REPORT_BAD: the secondary's replica failed a write (${error}): it is no exact copy any more`);
  if (q.coloExitAt === null && q.oob) {
    decide(ctx, 'yank', `the secondary's replica failed a write (${error}): yanking our links to it before a checkpoint makes that its state`);
    emit(ctx, { t: 'run', id: newId(s), procedure: { kind: 'yank', links: 'to-secondary' }, fromStep: 0 });
  }
}

function qemuLost(ctx: Ctx, processGone: boolean): void {
  const s = ctx.s;
  const q = s.qemu;
  q.inband = null;
  q.oobProbe = null;
  if (!processGone) {
    if (q.state !== 'attaching') q.attachingSince = s.now;
    q.state = 'attaching';
    return;
  }
  q.state = 'gone';
  q.paused = false;
  q.coloExitAt = null;
  q.checkpointSince = null;
  log(ctx, 'error', 'our QEMU is gone');
  setRole(s, 'down');
  // Let the survivor have the lease now rather than when it runs out.
  if (s.cfg.witness && s.lease.until > s.now) {
    s.lease.until = 0;
    s.lease.releasedAt = s.now;
    const id = newId(s);
    addPending(ctx, { id, to: 'witness', what: 'release', sentAt: s.now, deadline: s.now + 1000 });
    emit(ctx, { t: 'release-lease', id });
  }
  // Tell the peer at once.
  sendHeartbeat(ctx);
}

function peerMessage(ctx: Ctx, path: number, msg: Extract<Input, { t: 'peer-message' }>['msg']): void {
  const s = ctx.s;
  const p = s.peer.paths[path];
  if (!p) return;
  if (msg.t === 'hb') {
    if (!peerFresh(s) || msg.boot !== s.peer.boot) s.peer.heardAgainAt = s.now;
    s.peer.paths = s.peer.paths.map((x, i) => (i === path ? { ...x, up: true, lastHeardAt: s.now } : x));
    emit(ctx, { t: 'send-peer', path, msg: { t: 'hback', seq: msg.seq } });
    if (msg.boot !== s.peer.boot) {
      // A restarted agent numbers its heartbeats from 1 again.
      s.peer.boot = msg.boot;
      s.peer.seq = 0;
      forget(s, 'reprotect');
    }
    // Over several paths heartbeats can overtake each other: only the newest says how things are.
    if (msg.seq <= s.peer.seq) return;
    const before = s.peer.hb;
    s.peer.seq = msg.seq;
    s.peer.hb = msg;
    // Our primary says a checkpoint made our disk, its replica, short of a write: remembered until a resync, whatever
    // it says later (a restarted agent of it no longer knows).
    if ((msg.replicaShort === true || planted('short-replica-on-first-word')) && msg.replicaExact === false && s.role === 'secondary' && s.disk.missedWriteAt === null) {
      s.disk.missedWriteAt = s.now;
      log(ctx, 'warn', `${s.cfg.peer} says our disk, its replica, missed a write: it never takes over before a resync`);
      noteReplica(ctx, `${s.cfg.peer} said our disk missed a write`);
    }
    // Its word, as a primary, that a write it forwarded to us failed, before any checkpoint: our VM made that write
    // itself, our disk may not have (soak seed 12,624,199: the write failed while the witness was down, the primary
    // fenced without a new epoch, our QEMU ended, and we restarted the VM from our disk without it). Only a primary's
    // word: a fenced old primary still says what its last replica missed after we took over and wrote on (seed 279).
    if (msg.replicaExact === false && msg.role === 'primary' && replicaOfPeer(s) && s.disk.forwardedWriteFailedAt === null) {
      s.disk.forwardedWriteFailedAt = s.now;
      log(ctx, 'warn', `${s.cfg.peer} says a write it forwarded to our disk failed: our disk restarts no VM before a resync`);
      noteReplica(ctx, `${s.cfg.peer} said a write it forwarded to our disk failed`);
    }
    s.peer.hbAt = s.now;
    if (!before || before.role !== msg.role || before.qemu !== msg.qemu || before.busy !== msg.busy) s.peer.since = s.now;
    if (msg.qemu === 'alive' && msg.role !== 'fenced' && msg.role !== 'down') s.peer.vmStoppedSince = null;
    else s.peer.vmStoppedSince ??= s.now;
    if (before && (before.role !== msg.role || before.qemu !== msg.qemu)) {
      // The peer's situation changed: what failed before may work now.
      forget(s, 'reprotect', 'restart');
    }
  } else if (msg.t === 'hback') {
    const sent = s.hbSent.find((x) => x.seq === msg.seq);
    if (sent) {
      s.peer.rttMs = s.now - sent.at;
      if (!planted('cut-from-us-unseen')) s.peer.paths = s.peer.paths.map((x, i) => (i === path ? { ...x, lastAckAt: s.now } : x));
    }
  } else if (msg.t === 'req') {
    peerRequest(ctx, msg.id, msg.body);
  } else {
    peerReply(ctx, msg);
  }
}

// ---- the lease ----

/**
 * Asks the witness for the lease. An epoch we asked it to record and never
 * heard back about always goes with it: the witness confirms it (it is the
 * newest and ours) or refuses it; without it our disk would look stale.
 */
function askLease(ctx: Ctx, deadlineMs: number, nextOrNull: Epoch | null): void {
  const s = ctx.s;
  const next = nextOrNull ?? (planted('pending-epoch-not-carried') ? null : s.disk.pending) ?? null;
  const id = newId(s);
  addPending(ctx, { id, to: 'witness', what: 'lease', sentAt: s.now, deadline: s.now + deadlineMs, next });
  emit(ctx, { t: 'ask-witness', id, ttlMs: s.cfg.leaseMs, disk: s.disk.epoch ?? null, next });
}

function leaseOutstanding(s: CoreState): boolean {
  return s.pending.some((p) => p.what === 'lease' && !p.expired);
}

function leaseReply(ctx: Ctx, r: LeaseReply): void {
  const s = ctx.s;
  const p = takePending(s, r.re);
  if (!p || p.what !== 'lease') return;
  s.lease.lastAnswerAt = s.now;
  s.lease.newest = r.newest;
  if (r.granted) {
    // Counted from when we asked, and shortened by the drift both clocks may have: our view always ends before the
    // witness's. A request sent before we released the lease is answered with a grant the release has ended already.
    // (No simulated schedule needs this rule: we release only as our QEMU dies, and whatever we then write alone first
    // records a new epoch, which the witness grants only to the lease holder.)
    const ttl = r.ttlMs ?? s.cfg.leaseMs;
    const from = planted('lease-from-reply') ? s.now : p.sentAt;
    if (p.sentAt > s.lease.releasedAt) s.lease.until = Math.max(s.lease.until, from + ttl * (1 - 2 * CLOCK_DRIFT_MAX));
    s.lease.lastRefusal = null;
    // A grant with `next` means the witness recorded that epoch: commit it (if not already), also after a restart.
    if (p.next && !epochEquals(s.disk.epoch, p.next) && compareEpochs(p.next, s.disk.epoch) !== 'older') commitEpoch(ctx, p.next, 'recorded at the witness');
  } else {
    s.lease.lastRefusal = { at: s.now, reason: r.reason ?? 'refused', holder: r.holder };
    // Not recorded, and another epoch is the newest: the one we had asked for is void (unless another request for it
    // is still out). A refusal that says nothing of it (a witness in its grace period, which may well have recorded it
    // in its previous life) leaves it pending.
    // (No simulated schedule needs this rule unless the witness forgets what it recorded: its durable record always says
    // which epoch is the newest, README "What is not there yet".)
    if (p.next && r.newest && !epochEquals(r.newest, p.next) && epochEquals(s.disk.pending, p.next) && !s.pending.some((x) => x.what === 'lease' && epochEquals(x.next ?? undefined, p.next ?? undefined))) {
      persist(ctx, s.disk.epoch, undefined, 'the witness did not record our new epoch');
    }
  }
  if (writerWork(s)) writerLeaseAnswer(ctx, r, p);
}

// ---- our disk's record ----

/** Writes what our disk lacks (ReplicaNote): as it stands now, unless `note` says otherwise. */
function noteReplica(ctx: Ctx, why: string, note?: ReplicaNote): void {
  const d = ctx.s.disk;
  emit(ctx, { t: 'note-replica', note: note ?? { missedWrite: d.missedWriteAt !== null, forwardedWriteFailed: d.forwardedWriteFailedAt !== null }, why });
}

function persist(ctx: Ctx, epoch: Epoch | undefined, pending: Epoch | undefined, why: string): string {
  const s = ctx.s;
  const id = newId(s);
  s.disk.persisting = { id, epoch, pending };
  emit(ctx, { t: 'persist-disk', id, epoch, pending, why });
  return id;
}

function commitEpoch(ctx: Ctx, e: Epoch, why: string): void {
  persist(ctx, e, undefined, why);
}

function diskPersisted(ctx: Ctx, id: string, ok: boolean, error?: string): void {
  const s = ctx.s;
  const p = s.disk.persisting;
  if (!p || p.id !== id) return;
  s.disk.persisting = null;
  if (!ok) {
    log(ctx, 'error', `could not write our disk's record: ${error ?? 'unknown error'}`);
  } else {
    s.disk.epoch = p.epoch;
    s.disk.pending = p.pending;
  }
  // A record written outside a writer's or a join's work (a fenced node's recorded epoch) backs off when it fails.
  if (ok) succeeded(s, 'commit-recorded');
  else if (!writerWork(s) && s.work?.kind !== 'join') failed(ctx, 'commit-recorded', `could not write our disk's record: ${error ?? 'unknown error'}`);
  const w = s.work;
  if (writerWork(s)) {
    if (!ok) return writerFailed(ctx, `could not write our disk's record: ${error ?? 'unknown error'}`);
    advanceWriter(ctx);
  } else if (w?.kind === 'join' && w.phase === 'persisting') {
    if (!ok) return joinFailed(ctx, `could not write our disk's record: ${error ?? 'unknown error'}`);
    w.phase = 'adopting';
    w.procId = newId(s);
    emit(ctx, { t: 'run', id: w.procId, procedure: { kind: 'adopt-secondary' }, fromStep: 0 });
  }
}

// ---- periodic ----

function periodic(ctx: Ctx): void {
  const s = ctx.s;
  expirePending(ctx);
  // A primary failover not yet at its procedure gives up once the lease is no longer ahead and the secondary cannot
  // vouch for us: the secondary takes over as soon as the lease is free, and a VM of ours must not run then (the
  // failover's fence stops it). At its procedure it holds the lease, renewed: it carries on.
  const giving = writerWork(s);
  if (giving?.kind === 'primary-failover' && giving.procId === null && leaseLostUnvouched(s)) writerFailed(ctx, 'the lease ran out before our failover could begin, and the secondary cannot vouch for us');
  const ww = writerWork(s);
  // Taking over: ask again until the holder's lease runs out (or the deadline passes); recording: ask once a renewal is out of the way.
  if (ww && !leaseOutstanding(s) && ((ww.phase === 'lease' && s.now >= s.lease.nextAskAt) || ww.phase === 'record')) advanceWriter(ctx);
  renewLease(ctx);
  attachWatch(ctx);
  watchdog(ctx);
  const w = s.work;
  if (w?.kind === 'reprotect' && w.phase === 'asking' && s.now > w.deadline) {
    reprotectFailed(ctx, `${s.cfg.peer} did not answer the resync request in ${ms(w.deadline - w.startedAt)}`);
  }
  handOver(ctx);
  if (w?.kind === 'join' && w.phase === 'ready') {
    const gone = survivorGaveUp(s, w);
    if (gone || s.now > w.deadline) {
      decide(ctx, 'drop-secondary', gone ?? 'no word from the survivor: the resync is given up');
      leaveJoin(ctx);
    }
  }
}

function expirePending(ctx: Ctx): void {
  const s = ctx.s;
  for (let i = 0; i < s.pending.length; i++) {
    const p = s.pending[i]!;
    if (!p.expired && s.now >= p.deadline) {
      // Replace, never change: the entry (and the list) is shared with the previous state.
      s.pending = s.pending.map((x, k) => (k === i ? { ...p, expired: true } : x));
      pendingExpired(ctx, p);
    }
  }
  // Lease replies are useful late (a grant counts from when we asked); other replies are not.
  const kept = s.pending.filter((p) => s.now < (p.what === 'lease' ? p.deadline + LATE_REPLY_MS : p.deadline));
  if (kept.length !== s.pending.length) s.pending = kept;
}

/** The work waiting for this reply gives up at the request's deadline. */
function pendingExpired(ctx: Ctx, p: Pending): void {
  const s = ctx.s;
  const w = s.work;
  if (w?.kind === 'reprotect' && w.reqId === p.id && w.phase === 'asking') {
    w.reqId = null;
    return reprotectFailed(ctx, `${s.cfg.peer} did not answer the resync request in ${ms(p.deadline - p.sentAt)}`);
  }
  if (p.what === 'resync-done') log(ctx, 'warn', `${s.cfg.peer} did not confirm that it took the new secondary over`);
  const ww = writerWork(s);
  if (p.what !== 'lease' || !ww || leaseOutstanding(s)) return;
  // Our own request went unanswered: give up (or ask again while the lease deadline allows); a renewal's: ask ours now.
  if ((ww.phase === 'lease' && !p.next) || (ww.phase === 'record' && p.next && epochEquals(p.next, ww.next ?? undefined))) writerNoAnswer(ctx);
  else advanceWriter(ctx);
}

function renewLease(ctx: Ctx): void {
  const s = ctx.s;
  if (!s.cfg.witness || s.qemu.state === 'attaching') return;
  // A takeover or restart renews the lease while its procedure runs. (No simulated schedule can need this rule alone:
  // the procedure began under a new epoch of ours on record, so the other node's disk is stale at the witness and in
  // its own view, and neither grants nor un-fences it even once our lease lapsed. The mutation check found no catch
  // in 3,000 schedules with the witness's stale-disk checks planted away too. core.test checks it: "a takeover or
  // restart renews the lease while its procedure runs".)
  const writing = writerWork(s)?.phase === 'procedure';
  const renews = s.role === 'primary' || s.role === 'alone' || (s.role === 'fenced' && s.fence?.from !== 'secondary' && !staleDisk(s)) || writing;
  if (!renews) {
    // The others only ask how things stand (asking for the lease could take it from a primary between two renewals).
    if (s.now >= s.lease.nextQueryAt && (!s.work || s.work.kind === 'join') && !s.pending.some((p) => p.what === 'query')) {
      s.lease.nextQueryAt = s.now + 2 * s.cfg.leaseMs;
      const id = newId(s);
      addPending(ctx, { id, to: 'witness', what: 'query', sentAt: s.now, deadline: s.now + s.cfg.leaseMs });
      // With our disk's epoch: a witness that has no record of the run learns which disk we hold (witness-core.ts).
      emit(ctx, { t: 'query-witness', id, run: s.disk.epoch?.run ?? s.disk.pending?.run ?? null, disk: s.disk.epoch ?? null });
    }
    return;
  }
  if (leaseOutstanding(s) || s.now < s.lease.nextAskAt) return;
  const ww = writerWork(s);
  if (ww && (ww.phase === 'lease' || ww.phase === 'record')) return;
  s.lease.nextAskAt = s.now + Math.max(50, s.cfg.leaseMs / 4);
  askLease(ctx, Math.min(500, s.cfg.leaseMs / 2), null);
}

/**
 * A QEMU that stops answering is still a process: neither QEMU's events nor
 * the peer would ever call it dead. Two probes tell the cases apart: an
 * in-band query-status (needs the main loop and its big lock) and an
 * out-of-band query-yank (answered by the monitor's own thread).
 * - neither answers: the process is frozen → end it (it may never come back
 *   as a second writer), and the normal paths fail over;
 * - only the main loop is stuck: a checkpoint holds the big lock while RAM
 *   goes to the peer (patch 0001), which is normal for up to
 *   checkpointTimeoutMs; a write to a vanished peer can hold it for ever →
 *   yank the links to the peer (out of band), and end QEMU if that does not
 *   free it.
 */
function watchdog(ctx: Ctx): void {
  const s = ctx.s;
  const q = s.qemu;
  if (q.state !== 'alive' || q.killedAt !== null) return;
  if (!q.inband && s.now - q.lastInbandAt >= WATCHDOG_INTERVAL_MS) {
    q.inband = { id: newId(s), sentAt: s.now };
    emit(ctx, { t: 'query-qemu', id: q.inband.id, oob: false });
  }
  if (q.oob && !q.oobProbe && s.now - q.lastOobAt >= WATCHDOG_INTERVAL_MS) {
    q.oobProbe = { id: newId(s), sentAt: s.now };
    emit(ctx, { t: 'query-qemu', id: q.oobProbe.id, oob: true });
  }
  const hung = s.cfg.hungMs;
  // (No simulated invariant bounds how soon a frozen QEMU is ended; core.test checks it: "the watchdog lets a long
  // checkpoint finish, yanks a stuck one, and ends a frozen QEMU".)
  if (q.oobProbe && s.now - q.oobProbe.sentAt > s.cfg.frozenMs) return killQemu(ctx, `our QEMU answers nothing, not even out of band, for ${Math.round(s.now - q.oobProbe.sentAt)} ms: frozen`);
  if (!q.inband) return;
  // A query sent during a checkpoint that has ended since waits only from that end: the checkpoint held the main
  // loop (its bound allowed that), and the answer comes once the loop is free. Judged from when it was sent, a
  // checkpoint longer than the hung bound was yanked as it ended (simulator, restart-kept: soak seed 12,505,990, an
  // 8 s checkpoint's RESUME read before the answer to a query sent at its start: a yank, the replica's write failed,
  // and a primary failover).
  const stuckMs = s.now - (planted('hung-from-a-query-across-a-checkpoint') ? q.inband.sentAt : Math.max(q.inband.sentAt, q.lastCheckpointAt));
  const allowedMs = q.checkpointSince !== null ? Math.max(hung, s.cfg.checkpointTimeoutMs) : hung;
  if (stuckMs <= allowedMs) return;
  const inColo = s.role === 'primary' || s.role === 'secondary' || s.fence?.from === 'primary' || s.fence?.from === 'secondary';
  if (q.oob && inColo && q.yankedAt === null) {
    q.yankedAt = s.now;
    decide(ctx, 'yank', `our QEMU's main loop has not answered for ${Math.round(stuckMs)} ms${q.checkpointSince !== null ? ' (in a checkpoint)' : ''}: yanking its links to ${s.cfg.peer}`);
    emit(ctx, { t: 'run', id: newId(s), procedure: { kind: 'yank', links: peerLinks(s) }, fromStep: 0 });
    return;
  }
  if (q.yankedAt !== null && s.now - q.yankedAt <= hung) return;
  killQemu(ctx, `our QEMU's main loop has not answered for ${Math.round(stuckMs)} ms${q.yankedAt !== null ? ', not even after the yank' : ''}`);
}

/**
 * Which of our QEMU's links to the peer a yank shuts: to the primary if we are
 * (or were, before a fence) its secondary, else to the secondary.
 */
export function peerLinks(s: CoreState): PeerLinks {
  return s.role === 'secondary' || s.fence?.from === 'secondary' ? 'to-primary' : 'to-secondary';
}

/** A QEMU we cannot attach to within attachBoundMs is ended (the runtime keeps trying until then, and then finds none). */
function attachWatch(ctx: Ctx): void {
  const s = ctx.s;
  const q = s.qemu;
  if (q.state !== 'attaching' || q.killedAt !== null || planted('unattachable-qemu-left-running')) return;
  const ms = s.now - q.attachingSince;
  if (ms > attachBoundMs(s.cfg)) killQemu(ctx, `our QEMU could not be attached in ${Math.round(ms)} ms (its main loop does not answer)`);
}

function killQemu(ctx: Ctx, why: string): void {
  const s = ctx.s;
  s.qemu.killedAt = s.now;
  decide(ctx, 'kill', `${why}: ending it so that it can never come back as a second writer`);
  emit(ctx, { t: 'kill-qemu', why });
}

// ---- deciding what to do ----

type Action =
  | { action: 'primary-failover'; why: string; yank: boolean }
  | { action: 'takeover'; why: string; yank: boolean; stalled: boolean; resume: boolean }
  | { action: 'fence'; why: string; yank: boolean }
  | { action: 'unfence'; why: string }
  | { action: 'commit-recorded'; why: string }
  | { action: 'reprotect'; why: string }
  | { action: 'restart'; why: string }
  | { action: 'probe'; what: ProbeWhat; why: string }
  | { action: 'abort-resume'; why: string }
  | { action: 'wait'; why: string | null };

const wait = (why: string | null): Action => ({ action: 'wait', why });

function act(ctx: Ctx): void {
  const s = ctx.s;
  const a = choose(s);
  if (a.action === 'wait') {
    // Logged when the reason changes, not when only its figures do.
    if ((a.why ?? '').replace(/\d+/g, '#') !== (s.waiting ?? '').replace(/\d+/g, '#') && a.why) log(ctx, 'info', `waiting: ${a.why}`);
    s.waiting = a.why;
    return;
  }
  if (a.action === 'probe') {
    const id = newId(s);
    s.peer.probe = { id, sentAt: s.now, what: a.what };
    if ((a.why ?? '') !== (s.waiting ?? '')) log(ctx, 'info', `probing: ${a.why}`);
    s.waiting = a.why;
    emit(ctx, { t: 'probe-peer', id, what: a.what });
    return;
  }
  // Whatever failed a moment ago waits for its back-off before it is tried again.
  const kind = a.action === 'abort-resume' && planted('take-back-retried-as-resync') ? 'reprotect' : a.action;
  if (!mayTry(s, kind)) {
    s.waiting = `${a.action} (${a.why}): waiting before the next attempt`;
    return;
  }
  decide(ctx, a.action, a.why);
  switch (a.action) {
    case 'primary-failover':
      return beginWriter(ctx, 'primary-failover', a.why, { kind: 'primary-failover', yank: a.yank }, 1000, false);
    case 'takeover':
      // The primary's lease must have run out (or been released) first.
      return beginWriter(ctx, 'takeover', a.why, { kind: 'takeover', yank: a.yank, resume: a.resume }, s.cfg.leaseMs + 1500, a.stalled);
    case 'restart':
      return beginWriter(ctx, 'restart', a.why, { kind: 'restart' }, 2000, false);
    case 'fence':
      return beginSimple(ctx, 'fence', a.why, { kind: 'fence', yank: a.yank ? peerLinks(s) : null });
    case 'unfence':
      return beginSimple(ctx, 'unfence', a.why, { kind: 'unfence' });
    case 'commit-recorded':
      commitEpoch(ctx, s.lease.newest!, a.why);
      return;
    case 'abort-resume': {
      const id = newId(s);
      s.work = { kind: 'reprotect', phase: 'aborting', why: a.why, startedAt: s.now, coloSince: null, reqId: null, procId: id, step: null, mirror: null, error: null, deadline: Infinity, targetPid: null, cont: mayRunAlone(s) };
      emit(ctx, { t: 'run', id, procedure: { kind: 'abort-resume', cont: mayRunAlone(s) }, fromStep: 0 });
      return;
    }
    case 'reprotect':
      s.resyncAskedAt = null;
      return beginReprotect(ctx, a.why);
  }
}

/** The decision table. Pure: reads the state, changes nothing. */
function choose(s: CoreState): Action {
  if (s.qemu.state === 'attaching') return wait('attaching to our QEMU');
  if (s.disk.persisting) return wait('writing our disk\'s record');
  if (s.qemu.state === 'gone' || s.role === 'down') return chooseDown(s);
  if (s.qemu.leftovers) return { action: 'abort-resume', why: 'a resync of ours stopped half-way (found at attach): taking it back' };
  switch (s.role) {
    case 'primary':
      return choosePrimary(s);
    case 'secondary':
      return chooseSecondary(s, false);
    case 'alone':
      return chooseAlone(s);
    case 'fenced':
      return chooseFenced(s);
  }
}

function ms(x: number): string {
  return `${Math.round(x)} ms`;
}

function choosePrimary(s: CoreState): Action {
  const peer = peerWord(s);
  const fresh = peerFresh(s);
  if (peer?.role === 'alone') return { action: 'fence', why: `${s.cfg.peer} runs the VM alone: ours must not write`, yank: true };
  // First, whatever else is wrong: a secondary that cannot hear us takes over as soon as our lease runs out (sooner
  // where our host looks gone to it), so a primary failover that would begin now could not finish before then
  // (the lab's isolation test found two running VMs: the old primary's, in a failover waiting for the witness, and the survivor's).
  if (leaseLostUnvouched(s)) return { action: 'fence', why: 'the lease ran out and the secondary cannot vouch for us', yank: true };
  const failover = primaryFailoverReason(s, peer, fresh);
  if (failover && 'probe' in failover) return { action: 'probe', what: 'qemu', why: failover.probe };
  if (failover) {
    if (s.disk.epoch === undefined && !planted('takeover-with-unknown-epoch')) return { action: 'fence', why: `${failover.why}, but our disk's epoch is unknown (its record is missing or unreadable): we cannot carry on alone`, yank: true };
    // Never carry on alone with a disk older than the peer's (it wrote alone where we could not hear it).
    const behind = peerAhead(s);
    if (behind) return { action: 'fence', why: `${behind}: we may only be resynced`, yank: true };
    if (mayTry(s, 'primary-failover')) return { action: 'primary-failover', why: failover.why, yank: failover.yank };
    if (!(s.cfg.witness && !leaseValid(s))) return wait(`primary failover (${failover.why}): waiting before the next attempt`);
  }
  if (s.cfg.witness && staleDisk(s)) return { action: 'fence', why: 'the witness knows a newer disk than ours', yank: true };
  if (failover) return wait(`primary failover (${failover.why}): waiting before the next attempt`);
  if (!fresh) return wait('no heartbeat from the secondary\'s agent, but its QEMU answers');
  return probeAhead(s, 'qemu', 'does the secondary\'s QEMU answer?') ?? wait(null);
}

/** Why the primary should carry on alone, if it should (or that it should look at the secondary's QEMU first). */
function primaryFailoverReason(s: CoreState, peer: Heartbeat | null, fresh: boolean): { why: string; yank: boolean } | { probe: string } | null {
  // A new secondary of ours being taken over by the peer's agent: its heartbeat does not speak for it yet.
  const joining = peer?.busy === 'join';
  // Never fail over to a replica that missed a write: we carry on alone under a new epoch (the witness then refuses
  // the secondary's disk for good), and resync it.
  if (s.qemu.replicaBadAt !== null) return { why: 'the secondary\'s replica missed a write (QUORUM_REPORT_BAD): its disk is no exact copy any more', yank: true };
  if (!joining && (peer?.qemu === 'dead' || peer?.role === 'down')) return { why: 'the secondary reports its QEMU dead', yank: s.qemu.coloExitAt === null };
  if (s.qemu.coloExitAt !== null) return { why: 'COLO_EXIT: the checkpoint stream to the secondary broke', yank: true };
  const st = stalled(s);
  // A checkpoint under way longer than the stall bound while the secondary is silent: a QEMU that answers may only
  // be slow to take it while its agent is down (a daemon restart; the simulator's restart-kept, soak seeds
  // 12,501,500 and 12,601,061: a failover 4.7 s into a slow checkpoint). A host gone in the middle of it answers
  // nothing (below); one whose QEMU answers gets the checkpoint's own bound, as a heard secondary does (stalled).
  const slowCheckpoint = slowCheckpointOfSilentPeer(s, st) && !planted('slow-checkpoint-of-a-silent-secondary-taken-for-its-loss');
  if (st && !slowCheckpoint) return { why: st.inCheckpoint ? `replication stalled: a checkpoint has not completed in ${ms(st.ms)}` : `replication stalled: no checkpoint for ${ms(st.ms)}`, yank: true };
  const cut = joining ? null : replicationCut(s);
  if (cut) return { why: cut, yank: true };
  if (!fresh) {
    const pr = probeResult(s, 'qemu');
    if (pr) return pr.alive ? null : { why: 'no heartbeat, and the secondary\'s QEMU does not answer', yank: true };
    return probeUnderWay(s, 'qemu') ? null : { probe: 'no heartbeat from the secondary\'s agent: does its QEMU answer?' };
  }
  return null;
}

/**
 * The replication link is cut while the peer is heard: the heartbeat path over the replication network has carried
 * nothing one way or the other for a heartbeat timeout (no heartbeat of the peer's came over it, or none of ours
 * was acked over it: the peer acks each on the path it came by), and no checkpoint has completed for as long. Then
 * the stream is stuck, and so is what waits on it: the secondary's packets for colo-compare (the primary's output
 * is held), the primary's checkpoint request (colo.c waits for the reply with the VM running) and the replica's
 * writes (quorum waits for every child): the client waits until we yank and carry on alone. Waiting for the stall
 * bound instead (2 x checkpoint delay + heartbeat timeout + 1 s after the last checkpoint, or a checkpoint's own
 * bound when the cut came inside one) held the client 5.4-12.5 s in the lab. Safe as any primary failover: we hold
 * the lease, and the secondary, which hears us on another path, fences itself when we say we run alone. A path
 * silent for another reason while checkpoints complete (the stream flows) is no cut; a checkpoint may have completed
 * just before the cut, after the path's last heartbeat, so it is the checkpoint's own age that counts, not whether
 * it came after that heartbeat.
 */
function replicationCut(s: CoreState): string | null {
  const i = s.cfg.replicationPath;
  if (i === null || s.qemu.state !== 'alive' || planted('cut-waits-for-stall')) return null;
  const p = s.peer.paths[i];
  const heardAt = p?.lastHeardAt ?? null;
  // Never heard on it (a peer that does not listen there, or not yet): no word either way; the stall bound decides.
  if (!p || heardAt === null || !peerFresh(s)) return null;
  // Our heartbeats over it no longer acked while the peer's still come, long after the acks stopped: what we send is
  // lost (a cut one way, from us). A peer that merely fell silent (its agent killed) stopped both within a heartbeat
  // of each other, and is judged by its silence, not here (simulator, restart-kept: seed 1,001, a one-way "cut"
  // decided 440 ms after the secondary's agent was killed). A peer that never acked on it says nothing of that way.
  const heardMs = s.now - heardAt;
  const oneWay = p.lastAckAt !== null && (heardMs <= (s.now - p.lastAckAt) / 2 || planted('cut-when-the-peer-falls-silent'));
  const silentSince = oneWay ? p.lastAckAt! : heardAt;
  // Not since the peer was heard again after a silence on every path or restarted its agent: that path's session
  // may not be back yet (the lab's daemon restart, heard again on the dedicated path first): no word either way.
  if (s.peer.heardAgainAt !== null && silentSince < s.peer.heardAgainAt && !planted('cut-from-before-the-peer-was-back')) return null;
  const silentMs = s.now - silentSince;
  const sinceCheckpointMs = s.now - s.qemu.lastCheckpointAt;
  if (silentMs < s.cfg.heartbeatTimeoutMs || sinceCheckpointMs < s.cfg.heartbeatTimeoutMs) return null;
  // The peer still heard long after the path fell silent (within half that silence): over the path itself one way,
  // or over another (the newest heartbeat on any path: one over this path is as old as the silence, too old). A peer
  // that merely fell silent went quiet on every path within a heartbeat's jitter of each other, and is judged by its
  // silence (soak seed 12,606,826: the secondary's agent killed, its last heartbeat over the replication path came
  // 100 ms before its last over the other, and a took that for a cut 400 ms later).
  if (s.now - lastHeard(s)! > silentMs / 2 && !planted('cut-when-the-peer-falls-silent')) return null;
  const what = oneWay ? `none of our heartbeats over it acked for ${ms(silentMs)} while ${s.cfg.peer}'s come` : `no heartbeat over it for ${ms(silentMs)} while ${s.cfg.peer} is heard on another path`;
  return `the replication link is cut${oneWay ? ' one way, from us' : ''}: ${what}, and no checkpoint for ${ms(sinceCheckpointMs)}`;
}

/** `fenced`: our VM is stopped after COLO broke (called for a fenced secondary too). */
function chooseSecondary(s: CoreState, fenced: boolean): Action {
  const peer = peerWord(s);
  const fresh = peerFresh(s);
  const resume = fenced || s.qemu.paused;
  const a = secondaryAction(s, peer, fresh, fenced, resume);
  // A disk whose epoch we do not know never writes alone: rather than ask for a lease we cannot use (and keep the
  // other node waiting for us), we stop our VM and wait; the node with the newest known disk then restarts the VM.
  if (a.action === 'takeover' && s.disk.epoch === undefined && !planted('takeover-with-unknown-epoch')) {
    const why = 'our disk\'s epoch is unknown (its record is missing or unreadable): we cannot take over';
    return fenced ? wait(`fenced: ${why}; waiting to be resynced`) : { action: 'fence', why: `${why}; stopping our VM`, yank: true };
  }
  // Never take over with a disk older than the peer's (as it last told us): its acknowledged writes would be lost.
  const behind = a.action === 'takeover' && !planted('takeover-with-older-disk') ? peerAhead(s) : null;
  if (behind) return fenced ? wait(`fenced: ${behind}; waiting to be resynced`) : { action: 'fence', why: `${behind}: we may only be resynced`, yank: true };
  // Never take over with a disk the primary said lacks a write it acknowledged (soak, focus schedule 1,641 of
  // unfence-before-recorded-epoch-on-disk: the witness was down when the replica failed a write, so the primary
  // could raise no epoch; it fenced, and its secondary took over without that write).
  if (a.action === 'takeover' && s.disk.missedWriteAt !== null && !planted('takeover-with-short-replica')) {
    const why = `${s.cfg.peer} said our disk, its replica, missed a write ${ms(s.now - s.disk.missedWriteAt)} ago`;
    return fenced ? wait(`fenced: ${why}; waiting to be resynced`) : { action: 'fence', why: `${why}: we may only be resynced`, yank: true };
  }
  if (a.action === 'takeover' && !mayTry(s, 'takeover')) return wait(`takeover (${a.why}): waiting before the next attempt`);
  return a;
}

function secondaryAction(s: CoreState, peer: Heartbeat | null, fresh: boolean, fenced: boolean, resume: boolean): Action {
  const exited = fenced || s.qemu.coloExitAt !== null;
  if (exited && staleDisk(s)) {
    return fenced ? wait('fenced: the witness knows a newer disk; waiting to be resynced') : { action: 'fence', why: 'the witness knows a newer disk than ours: our VM is out of date; waiting to be resynced', yank: true };
  }
  if (exited) {
    if (!fresh) {
      // Silence is no proof of a dead primary: only the witness can say that it no longer writes.
      if (!s.cfg.witness && !planted('takeover-on-silence-without-witness')) {
        // A takeover the primary's word began (its QEMU dead) goes on when the primary then falls silent: our disk
        // already carries an epoch of ours, newer than the primary's, and its agent restarts no VM while we are silent
        // or taking over (focus schedule 1,642 of found-stopped-waits-for-peer: a's host gone for good just after it
        // said its QEMU died, b's takeover failed half-way and b waited for a's word for ever).
        const ours = s.disk.epoch;
        if (ours?.by === s.cfg.name && compareEpochs(ours, s.peer.hb?.disk ?? undefined) === 'newer' && !planted('begun-takeover-waits-for-peer')) {
          return { action: 'takeover', why: `finishing the takeover the primary's word began (our disk is ${formatEpoch(ours)} already)`, yank: true, stalled: fenced, resume };
        }
        return wait('COLO ended and the primary is silent: without a witness a partition cannot be told from a dead primary; staying out of the way (lockstep failover --to NODE moves the VM by hand)');
      }
      if (planted('never-take-over-on-silence')) return wait('the primary is silent: waiting for its word');
      if (fenced && s.now - (lastHeard(s) ?? s.startedAt) < restartSilenceMs(s.cfg)) return wait(`fenced (${s.fence!.why}): waiting to be resynced`);
      return { action: 'takeover', why: fenced ? 'fenced, and the primary has been silent for long' : 'COLO_EXIT and no heartbeat from the primary', yank: true, stalled: fenced, resume };
    }
    if (peer?.qemu === 'dead' || peer?.role === 'down') return { action: 'takeover', why: 'the primary reports its QEMU dead', yank: true, stalled: false, resume };
    // A primary that stopped its VM may let it run again once the lease is its again: only the lease decides.
    if (s.cfg.witness && peer?.role === 'fenced' && peer.busy === null) return { action: 'takeover', why: 'the primary fenced itself', yank: true, stalled: fenced, resume };
    if (fenced) return wait(`fenced (${s.fence!.why}): waiting to be resynced`);
    // The stream can break a moment before the primary's agent reports its QEMU dead: give it time to say so.
    if (s.now - s.qemu.coloExitAt! < s.cfg.heartbeatTimeoutMs) return wait('COLO_EXIT: waiting for the primary\'s word');
    return { action: 'fence', why: 'COLO_EXIT while the primary lives: the replication link broke; waiting to be resynced', yank: true };
  }
  const st = stalled(s);
  // The witness knows a newer disk: the primary went on alone where we could not hear it. Ours is out of date.
  if (staleDisk(s)) return { action: 'fence', why: 'the witness knows a newer disk than ours: our VM is out of date; waiting to be resynced', yank: true };
  if (fresh && peer) {
    if (peer.qemu === 'dead' || peer.role === 'down') return { action: 'takeover', why: 'the primary reports its QEMU dead (and our stream did not end)', yank: true, stalled: false, resume };
    if (peer.role === 'alone') return { action: 'fence', why: 'the primary carries on alone: our VM is out of date; waiting to be resynced', yank: true };
    if (s.cfg.witness && peer.role === 'fenced' && peer.busy === null) return { action: 'takeover', why: 'the primary fenced itself', yank: true, stalled: true, resume };
    if (st) return wait(`replication stalled for ${ms(st.ms)}: the primary decides`);
    return hostProbeAhead(s) ?? wait(null);
  }
  if (fresh) return hostProbeAhead(s) ?? wait(null);
  // Every heartbeat path is silent. With a witness, we need not wait for the stream to stall if the primary's host
  // answers nothing at all (not even a refusal from its kernel): it is gone, or cut off from us, and either way only
  // the lease decides (it is granted to us once the primary's ran out, and the primary stops its VM before then:
  // choosePrimary). A host that answers may hold a VM that still checkpoints to us: the stall decides, as before.
  if (probesHost(s)) {
    const host = probeResult(s, 'host');
    if (host && !host.alive) return { action: 'takeover', why: 'no heartbeat, and the primary\'s host answers nothing (gone or cut off): the primary is unreachable', yank: true, stalled: true, resume };
    // A checkpoint under way longer than the stall bound, with the primary silent: a host that answers may hold a VM
    // whose checkpoint is only slow while its agent is down (a daemon restart; the simulator's restart-kept, soak
    // seeds 1,625 and 2,037: taken over 3.5 s into a slow checkpoint). A host gone in the middle of it answers nothing
    // (above); one that answers gets the checkpoint's own bound, as a heard primary does (stalled).
    const slowCheckpoint = slowCheckpointOfSilentPeer(s, st) && !planted('slow-checkpoint-of-a-silent-primary-taken-for-its-loss');
    const waitForHost = !host && (!st || slowCheckpoint);
    if (waitForHost && !probeUnderWay(s, 'host')) return { action: 'probe', what: 'host', why: 'no heartbeat from the primary: does its host answer?' };
    // (The journal said "checkpoints continue (or the primary's host answers)" here, 6 ms before the probe's answer
    // and the takeover: the observe test's power loss.)
    if (waitForHost) return wait(`no heartbeat from the primary: waiting for the probe of its host (at most ${PROBE_TIMEOUT_MS} ms)`);
    if (slowCheckpoint) return wait(`no heartbeat, and a checkpoint under way for ${ms(st.ms)}, but the primary's host answers: its agent may be down, not its VM; a checkpoint may take up to ${ms(s.cfg.checkpointTimeoutMs)}`);
  }
  if (!st) return wait('no heartbeat, but checkpoints continue (or the primary\'s host answers): the primary\'s agent is down, not its VM');
  // Without a witness a partition cannot be told from a dead primary.
  if (!s.cfg.witness && !planted('takeover-on-silence-without-witness')) return wait('no heartbeat and no checkpoints, but no witness to decide: staying secondary');
  if (planted('never-take-over-on-silence')) return wait('no heartbeat and no checkpoints: waiting for the primary\'s word');
  return { action: 'takeover', why: `no heartbeat and no checkpoint for ${ms(st.ms)}: the primary is unreachable`, yank: true, stalled: true, resume };
}

/** A secondary with a witness probes its primary's host when the primary falls silent (secondaryAction). */
function probesHost(s: CoreState): boolean {
  return s.cfg.witness && !planted('never-take-over-on-silence') && !planted('takeover-waits-for-stall');
}

/** ... and does so ahead of the heartbeat timeout. */
function hostProbeAhead(s: CoreState): Action | null {
  return probesHost(s) ? probeAhead(s, 'host', 'does the primary\'s host answer?') : null;
}

/** The peer's disk, as it last told us, is newer than ours (or began its own epoch beside ours): we must not write alone. */
function peerAhead(s: CoreState): string | null {
  const hb = s.peer.hb;
  if (!hb) return null;
  const theirs = hb.disk ?? undefined;
  // Without a witness nobody else can vouch that a disk whose epoch its node does not know is not newer than ours.
  if (!theirs && !s.cfg.witness) return `${s.cfg.peer}'s disk epoch is unknown (no witness to say ours is the newest)`;
  const o = compareEpochs(theirs, s.disk.epoch);
  return o === 'newer' || o === 'divergent' ? `${s.cfg.peer}'s disk (${formatEpoch(theirs)}) is ${o === 'newer' ? 'newer than' : 'divergent from'} ours (${formatEpoch(s.disk.epoch)})` : null;
}

function chooseAlone(s: CoreState): Action {
  const peer = peerWord(s);
  const fresh = peerFresh(s);
  if (s.cfg.witness && staleDisk(s)) return { action: 'fence', why: 'the witness knows a newer disk than ours', yank: false };
  // Covered, as long as the witness refuses stale disks: we became alone under a new epoch, so the peer cannot be
  // granted the lease until it is resynced from us. Without that check, this rule alone keeps a second writer away.
  if (s.cfg.witness && !starting(s) && !leaseAhead(s) && !fresh && !planted('alone-without-lease-runs-on')) return { action: 'fence', why: 'running alone without the lease (or about to lose it) and without word from the peer', yank: false };
  if (s.cfg.witness && peer && (peer.role === 'alone' || peer.role === 'primary') && !leaseAhead(s)) {
    return { action: 'fence', why: `${s.cfg.peer} also runs the VM and we do not hold the lease`, yank: false };
  }
  if (!s.cfg.reprotect && s.resyncAskedAt === null) return wait('running alone, unprotected (re-protection is off: lockstep resync NAME protects it again)');
  if (!fresh || !peer) return wait('running alone, unprotected: no word from the peer');
  if (!(peer.role === 'down' || peer.role === 'fenced') || peer.busy !== null) return wait(`running alone, unprotected: the peer is ${peer.role}${peer.busy ? ` (${peer.busy})` : ''}`);
  if (!mayTry(s, 'reprotect')) return wait(`running alone, unprotected: waiting before the next resync attempt`);
  // Only ever towards an older or identical disk. With a witness, holding the lease proves ours is the newest
  // recorded, so a peer whose record was lost cannot hold newer data; without one, a peer whose epoch is unknown is
  // never resynced. (No simulated schedule can need that last rule alone: a peer holds a newer disk than a node
  // running alone only after two writers, which the other rules prevent; the mutation check found it only with
  // takeover-with-older-disk planted away too, which made two writers first. core.test checks it: "a peer whose disk
  // epoch is unknown is resynced only on the witness's word".)
  const unknown = peer.disk === null && s.disk.epoch !== undefined;
  const ok =
    mayResyncTowards(s.disk.epoch, peer.disk ?? undefined) ||
    (s.cfg.witness && leaseValid(s) && !staleDisk(s) && unknown) ||
    (planted('resync-towards-newer') && s.disk.epoch !== undefined && peer.disk !== null);
  if (!ok) {
    return wait(`running alone, unprotected: not resyncing ${s.cfg.peer}, its disk (${formatEpoch(peer.disk ?? undefined)}) is ${compareEpochs(peer.disk ?? undefined, s.disk.epoch)} than/to ours (${formatEpoch(s.disk.epoch)})`);
  }
  if (s.cfg.witness && !leaseValid(s)) return wait('running alone, unprotected: waiting for the lease before resyncing');
  const asked = s.resyncAskedAt !== null ? ', as an operator asked' : '';
  return { action: 'reprotect', why: `${s.cfg.peer}'s agent is back (${peer.role}, disk ${formatEpoch(peer.disk ?? undefined)}, ours ${formatEpoch(s.disk.epoch)}): resync it as our new secondary${asked}` };
}

function chooseFenced(s: CoreState): Action {
  const f = s.fence!;
  if (f.from === 'secondary') return chooseSecondary(s, true);
  // A disk whose epoch we do not know never runs the VM again on a guess: only a resync makes it known.
  if (s.disk.epoch === undefined && !planted('unfence-with-unknown-epoch')) return wait(`fenced (${f.why}): our disk's epoch is unknown (its record is missing or unreadable); waiting to be resynced`);
  if (staleDisk(s)) return wait(`fenced (${f.why}): the witness knows a newer disk; waiting to be resynced`);
  // The witness recorded the new epoch we asked for, but writing it on our disk failed (our writer gave up and fenced
  // us): on our disk first, else our VM would run again under an epoch older than the witness's newest.
  if (recordedNotOnDisk(s)) {
    if (planted('recorded-epoch-never-committed')) return wait(`fenced (${f.why}): waiting for the lease`);
    return { action: 'commit-recorded', why: `the witness recorded our epoch ${formatEpoch(s.disk.pending)} and our disk still says ${formatEpoch(s.disk.epoch)}: writing it there before our VM may run again` };
  }
  const peer = peerWord(s);
  if (peer && (peer.role === 'alone' || peer.role === 'primary')) return wait(`fenced (${f.why}): ${s.cfg.peer} runs the VM; waiting to be resynced`);
  // (No simulated schedule needs this rule: without a witness the peer writes alone only on our word that our VM is
  // gone, with one the lease and the stale-disk checks keep us away first.)
  const behind = peerAhead(s);
  if (behind) return wait(`fenced (${f.why}): ${behind}; waiting to be resynced`);
  if (peer && peer.busy !== null) return wait(`fenced (${f.why}): ${s.cfg.peer} is busy (${peer.busy})`);
  if (!mayTry(s, 'unfence')) return wait(`fenced (${f.why}): waiting before the next attempt`);
  if (planted('never-unfence')) return wait(`fenced (${f.why})`);
  if (s.cfg.witness && (leaseAhead(s) || planted('unfence-without-lease'))) return { action: 'unfence', why: 'the lease is ours again' };
  if (!s.cfg.witness && peerFresh(s) && peer?.hearsPeer) return { action: 'unfence', why: `${s.cfg.peer} hears us again` };
  // Without a witness a node that writes alone does so on its own authority (under an epoch of its own): a VM of ours
  // only found stopped (a stop that took effect late) runs again on that authority, whether the peer is heard or not
  // (focus schedule 1,480 of take-back-retried-as-resync: its peer's host gone for good, it waited for its word for ever).
  if (!s.cfg.witness && f.foundStopped && s.disk.epoch?.by === s.cfg.name && !planted('found-stopped-waits-for-peer')) {
    return { action: 'unfence', why: 'our VM was only found stopped, and we write under an epoch of our own' };
  }
  return wait(`fenced (${f.why}): waiting for the lease`);
}

function chooseDown(s: CoreState): Action {
  if (s.work) return wait(null);
  if (!s.cfg.reprotect) return wait('our QEMU is gone (re-protection off: no restart by ourselves)');
  if (!mayTry(s, 'restart')) return wait(`our QEMU is gone: waiting before the next restart attempt`);
  const ours = s.disk.epoch;
  if (!ours) return wait('our QEMU is gone and our disk\'s epoch is unknown: not restarting from it');
  // A replica that may lack a write its primary acknowledged never starts the VM: only a resync makes it whole; the
  // primary's disk holds the write. Whether the write was acknowledged we cannot know (in soak seed 12,624,199 it was:
  // our VM had made it itself and answered). Unless our disk carries an epoch of our own: our takeover began, which
  // commits our VM's own writes (that one included) to our disk, and the primary's disk is stale at the witness
  // (soak seeds 12,704,353 and 12,705,157: a takeover whose QEMU hung and was ended; waiting, nobody ran the VM).
  // A takeover whose QEMU ends before that commit is done loses them: README "What is not there yet".
  const short = shortReplicaSince(s);
  if (short !== null && !planted('restart-from-short-replica')) return wait(`our QEMU is gone and ${s.cfg.peer} said a write to our disk failed ${ms(s.now - short)} ago: not restarting from it; waiting to be resynced`);
  if (staleDisk(s)) return wait('our QEMU is gone and our disk is stale: waiting to be resynced');
  const peer = peerWord(s);
  // An epoch we asked the witness to record and never heard back about may be the newest it knows: only we can
  // confirm it (by asking again), so we go first; the witness refuses us if someone else is newer.
  if (s.cfg.witness && s.disk.pending && peer?.busy == null && !(peer && peer.qemu === 'alive' && peer.role !== 'fenced')) {
    return { action: 'restart', why: `our QEMU is gone and our new epoch ${formatEpoch(s.disk.pending)} may be the newest the witness knows` };
  }
  if (peer) {
    const order = compareEpochs(ours, peer.disk ?? undefined);
    // A peer that should act and has not for long (it may be stale where only the witness knows, or its takeover keeps
    // failing, each attempt a new "busy"): the witness decides. Soak seed 2,012,113: a takeover failed for 37 s on
    // end, its witness replies lost, while we held the newest disk and reached the witness.
    const stuckMs = s.now - ((planted('peer-stuck-from-its-last-attempt') ? s.peer.since : s.peer.vmStoppedSince) ?? s.now);
    const giveUp = s.cfg.witness && stuckMs > restartSilenceMs(s.cfg) && order !== 'older' && order !== 'divergent';
    if (peer.busy !== null) {
      if (giveUp) return { action: 'restart', why: `${s.cfg.peer}'s VM has not run for ${ms(stuckMs)}, its ${peer.busy} not done: the witness decides` };
      return wait(`our QEMU is gone; ${s.cfg.peer} is busy (${peer.busy})`);
    }
    if (peer.qemu === 'alive' && peer.role !== 'fenced') return wait(`our QEMU is gone; ${s.cfg.peer} runs the VM (${peer.role})`);
    if (peer.role === 'fenced') {
      // Its VM is stopped: it takes over itself if its disk is as new as ours; if ours is newer, we restart.
      if (order === 'newer') return { action: 'restart', why: `${s.cfg.peer}'s VM is stopped and our disk is newer (${formatEpoch(ours)} > ${formatEpoch(peer.disk ?? undefined)})` };
      if (giveUp) return { action: 'restart', why: `${s.cfg.peer}'s VM has been stopped for ${ms(stuckMs)} without taking over: the witness decides` };
      return wait(`our QEMU is gone; ${s.cfg.peer}'s VM is stopped and takes over`);
    }
    // The whole pair is down: the newest disk starts the VM again (of two equal ones, the first name's).
    if (order === 'newer' || (order === 'same' && s.cfg.name < s.cfg.peer)) {
      return { action: 'restart', why: `no VM runs on either node, and our disk is the newest (${formatEpoch(ours)}, ${s.cfg.peer}'s ${formatEpoch(peer.disk ?? undefined)})` };
    }
    if (order === 'unknown' && s.cfg.witness) return { action: 'restart', why: `no VM runs on either node and ${s.cfg.peer}'s disk epoch is unknown: the witness decides` };
    if (giveUp) return { action: 'restart', why: `no VM runs, and ${s.cfg.peer} has not restarted it in ${ms(stuckMs)}: the witness decides` };
    return wait(`no VM runs; ${s.cfg.peer}'s disk is ${order === 'same' ? 'as new as ours and restarts' : `${compareEpochs(peer.disk ?? undefined, ours)} than ours`}`);
  }
  const behind = peerAhead(s);
  if (behind) return wait(`our QEMU is gone and ${behind}`);
  // The peer is silent: it may run the VM where we cannot hear it. Only the witness can tell.
  if (!s.cfg.witness) return wait('our QEMU is gone and the peer is silent: without a witness we cannot know it does not run the VM');
  const silentMs = s.now - (lastHeard(s) ?? s.startedAt);
  if (silentMs < restartSilenceMs(s.cfg) || planted('never-restart-on-silence')) return wait(`our QEMU is gone and the peer is silent for ${ms(silentMs)}`);
  return { action: 'restart', why: `our QEMU is gone and the peer has been silent for ${ms(silentMs)}: restarting from our disk if the witness agrees` };
}

// ---- becoming the only writer: lease, new epoch, procedure ----

function beginWriter(ctx: Ctx, kind: 'primary-failover' | 'takeover' | 'restart', why: string, fresh: Procedure, leaseWaitMs: number, isStalled: boolean): void {
  const s = ctx.s;
  const procedure = sameProcedure(s, kind, fresh);
  s.work = { kind, phase: 'lease', why, startedAt: s.now, leaseDeadline: s.now + leaseWaitMs, stalled: isStalled, procedure, procId: null, procedureAt: null, next: null };
  advanceWriter(ctx);
}

type WriterWork = Extract<Work, { kind: 'primary-failover' | 'takeover' | 'restart' }>;

function writerWork(s: CoreState): WriterWork | null {
  const w = s.work;
  return w && (w.kind === 'primary-failover' || w.kind === 'takeover' || w.kind === 'restart') ? w : null;
}

/** Moves the writer work on as far as it can go without waiting for an answer. */
/** lease → persist-pending → record/commit → procedure, and once back to lease: more passes at one step is a loop. */
const WRITER_PASSES_MAX = 8;

function advanceWriter(ctx: Ctx): void {
  const s = ctx.s;
  const w = writerWork(s);
  if (!w) return;
  // Each pass moves the work one phase on, or returns: a handful of passes at most (a loop here is a bug).
  for (let pass = 0; ; pass++) {
    invariant(pass < WRITER_PASSES_MAX, `${w.kind}: the writer's phases went round ${pass} times without waiting (at ${w.phase})`);
    switch (w.phase) {
      case 'lease':
        // With a stop margin ahead, as the procedure's start asks below (else the two would send each other round).
        if (leaseAhead(s)) {
          w.phase = 'persist-pending';
          continue;
        }
        if (s.now >= w.leaseDeadline) return writerFailed(ctx, `no lease within ${ms(w.leaseDeadline - w.startedAt)}${s.lease.lastRefusal ? `: ${s.lease.lastRefusal.reason}` : ''}`);
        if (!leaseOutstanding(s)) {
          s.lease.nextAskAt = s.now + 100;
          askLease(ctx, Math.max(50, Math.min(500, w.leaseDeadline - s.now)), null);
        }
        return;
      case 'persist-pending': {
        const ours = s.disk.epoch;
        if (!ours) return writerFailed(ctx, 'our disk\'s epoch is unknown (its record is missing or unreadable): we cannot write alone');
        // An earlier attempt of this episode raised it already: straight to the procedure.
        if (epochEquals(attemptsOf(s, w.kind).raised, ours)) {
          w.phase = 'procedure';
          continue;
        }
        // Ask again for an epoch we asked for and never heard back about, rather than a second new one.
        w.next = s.disk.pending && compareEpochs(s.disk.pending, ours) === 'newer' ? s.disk.pending : nextEpoch(ours, s.cfg.name);
        if (!s.cfg.witness) {
          w.phase = 'commit';
          persist(ctx, w.next, undefined, `${w.kind}: ${w.why}`);
          return;
        }
        w.phase = 'record';
        if (!epochEquals(s.disk.pending, w.next)) {
          // On our disk first: restarted before the answer, we ask again with the same epoch.
          persist(ctx, ours, w.next, `${w.kind}: asking the witness to record ${formatEpoch(w.next)}`);
          return;
        }
        continue;
      }
      case 'record':
        if (s.disk.persisting) return;
        if (!leaseOutstanding(s)) askLease(ctx, 1000, w.next);
        return;
      case 'commit':
        // The witness recorded it (or there is none): on our disk, then the procedure.
        if (s.disk.persisting) return;
        if (!epochEquals(s.disk.epoch, w.next ?? undefined)) {
          persist(ctx, w.next!, undefined, `${w.kind}: ${w.why}`);
          return;
        }
        setAttempts(s, w.kind, { ...attemptsOf(s, w.kind), raised: w.next! });
        w.phase = 'procedure';
        continue;
      case 'procedure':
        if (w.procId) return;
        if (!leaseAhead(s) && !planted('write-alone-without-lease')) {
          // The lease lapsed while we recorded our epoch (a slow witness): get it again first.
          w.phase = 'lease';
          continue;
        }
        // Only a lease holder begins to write alone, and only in an epoch of its own.
        invariant(leaseValid(s) || planted('write-alone-without-lease'), `${w.kind} begins only while holding the lease`);
        invariant(s.disk.epoch !== undefined && s.disk.epoch.by === s.cfg.name, `${w.kind} begins only once a new epoch of ours is on our disk`);
        w.procId = newId(s);
        w.procedureAt = s.now;
        emit(ctx, { t: 'run', id: w.procId, procedure: w.procedure, fromStep: attemptsOf(s, w.kind).stepsDone });
        return;
    }
  }
}

function writerLeaseAnswer(ctx: Ctx, r: LeaseReply, p: Pending): void {
  const s = ctx.s;
  const w = writerWork(s)!;
  if (w.phase === 'lease') {
    if (r.granted) return advanceWriter(ctx);
    if (r.reason?.startsWith('stale')) return writerFailed(ctx, `the witness refused the lease: ${r.reason}`);
    // Held by the other node: ask again (periodic) until its lease runs out or our deadline passes.
    s.lease.nextAskAt = s.now + Math.min(200, Math.max(50, r.remainingMs ?? 100));
    if (s.now >= w.leaseDeadline) return writerFailed(ctx, `no lease: ${r.reason ?? `held by ${r.holder ?? 'someone'}`}`);
    return;
  }
  if (w.phase === 'record') {
    if (!(p.next && epochEquals(p.next, w.next ?? undefined))) return advanceWriter(ctx); // a renewal's answer: now ask ours
    if (!r.granted) return writerFailed(ctx, `the witness did not record our new epoch ${formatEpoch(p.next)}: ${r.reason ?? 'refused'}`);
    // Recorded (leaseReply began writing it to our disk).
    w.phase = 'commit';
    return advanceWriter(ctx);
  }
}

/** No answer from the witness in time. */
function writerNoAnswer(ctx: Ctx): void {
  const s = ctx.s;
  const w = writerWork(s)!;
  if (w.phase === 'lease') {
    if (s.now < w.leaseDeadline) return;
    return writerFailed(ctx, 'the witness did not answer: no lease');
  }
  // Our pending epoch stays on our disk: the witness may have recorded it; we ask again with it next time.
  return writerFailed(ctx, 'the witness did not answer whether it recorded our new epoch');
}

/**
 * The writer work gave up before its procedure. A primary that cannot carry
 * on alone, or a secondary whose stream broke, stops its VM rather than risk
 * a second writer; a secondary whose stream only stalled stays one and asks
 * again later; a restart tries again later.
 */
function writerFailed(ctx: Ctx, error: string): void {
  const s = ctx.s;
  const w = writerWork(s)!;
  s.work = null;
  failed(ctx, w.kind, error);
  // With a witness a failure may mean someone else holds the lease: stop our VM. Without one nobody else can have been
  // granted anything; our VM is no writer yet (a COLO primary holds its answers, a secondary is off the LAN): retry.
  if ((s.cfg.witness || planted('failed-failover-fences-without-witness')) && (w.kind === 'primary-failover' || (w.kind === 'takeover' && !w.stalled && s.role === 'secondary'))) {
    decide(ctx, 'fence', `${w.kind} impossible (${error}): stopping our VM so that it cannot be a second writer`);
    beginSimple(ctx, 'fence', error, { kind: 'fence', yank: peerLinks(s) });
  } else if (w.kind === 'takeover' && w.stalled) {
    // Ask again, but not before the primary's lease could have run out again.
    const a = attemptsOf(s, 'takeover');
    setAttempts(s, 'takeover', { ...a, notBefore: Math.max(a.notBefore, s.now + 2 * s.cfg.leaseMs) });
  }
}

/** A retry runs the procedure it began with: its step count is what stepsDone counts in. */
function sameProcedure(s: CoreState, kind: string, fresh: Procedure): Procedure {
  const a = attemptsOf(s, kind);
  if (a.procedure && a.stepsDone > 0) return a.procedure;
  setAttempts(s, kind, { ...a, procedure: fresh, stepsDone: 0 });
  return fresh;
}

function beginSimple(ctx: Ctx, kind: 'fence' | 'unfence', why: string, fresh: Procedure): void {
  const s = ctx.s;
  const procedure = sameProcedure(s, kind, fresh);
  const id = newId(s);
  s.work = { kind, why, startedAt: s.now, procedure, procId: id, from: s.role };
  emit(ctx, { t: 'run', id, procedure, fromStep: attemptsOf(s, kind).stepsDone });
}

// ---- procedure results ----

function procProgress(ctx: Ctx, id: string, stepsDone: number, stepName: string, mirror?: { offset: number; len: number }): void {
  const s = ctx.s;
  const w = s.work;
  if (!w || !('procId' in w) || w.procId !== id) return;
  if (w.kind === 'reprotect') {
    w.step = stepName;
    if (mirror) w.mirror = mirror;
    return;
  }
  // A restart starts a new QEMU each time: it always begins at its first step.
  if (w.kind === 'join' || w.kind === 'restart') return;
  const a = attemptsOf(s, w.kind);
  setAttempts(s, w.kind, { ...a, stepsDone });
}

function procDone(ctx: Ctx, id: string, pid?: number): void {
  const s = ctx.s;
  const w = s.work;
  if (!w || !('procId' in w) || w.procId !== id) return;
  s.qemu.procedureEndedAt = s.now;
  // A procedure on our QEMU that ended as the QEMU died did nothing that counts: we are down.
  const onOurQemu = w.kind === 'primary-failover' || w.kind === 'takeover' || w.kind === 'fence' || w.kind === 'unfence' || (w.kind === 'reprotect' && w.phase === 'resuming');
  // (Also covered: a node whose QEMU is gone decides as one that is down, whatever its role says.)
  if (onOurQemu && s.qemu.state !== 'alive') {
    s.work = null;
    log(ctx, 'warn', `${w.kind} ended, but our QEMU is gone`);
    return;
  }
  switch (w.kind) {
    case 'primary-failover':
    case 'takeover': {
      s.work = null;
      succeeded(s, w.kind);
      s.qemu.coloExitAt = null;
      s.qemu.replicaBadAt = null;
      s.qemu.replicaShort = false;
      s.qemu.paused = false;
      // Taken over, our running VM's writes are on our disk now, the one it failed included.
      if (s.disk.forwardedWriteFailedAt !== null) {
        s.disk.forwardedWriteFailedAt = null;
        noteReplica(ctx, 'our takeover finished: our disk has our VM\'s writes');
      }
      s.qemu.checkpointSince = null;
      setRole(s, 'alone');
      // ms: from the decision to the VM carried on, of which toProcedureMs before its QMP procedure began (the lease,
      // the new epoch recorded at the witness and on our disk); sinceCheckpointMs: from the VM's last checkpoint to the
      // decision (detection). None is what a client felt (only a client can tell that), but together they bound the
      // part of it that the agents spent.
      const toProcedureMs = w.procedureAt === null ? null : Math.round(w.procedureAt - w.startedAt);
      emit(ctx, { t: 'record', event: 'failover', detail: { from: s.cfg.peer, to: s.cfg.name, reason: `agent: ${w.why}`, ms: Math.round(s.now - w.startedAt), toProcedureMs, sinceCheckpointMs: Math.max(0, Math.round(w.startedAt - s.qemu.lastCheckpointAt)), procedure: w.kind } });
      log(ctx, 'warn', `${w.kind} done in ${ms(s.now - w.startedAt)}: running alone, unprotected`);
      sendHeartbeat(ctx);
      return;
    }
    case 'restart':
      s.work = null;
      if (s.qemu.state !== 'alive') return failed(ctx, 'restart', 'the restarted QEMU is gone already', 0);
      succeeded(s, 'restart');
      setRole(s, 'alone');
      emit(ctx, { t: 'record', event: 'restart', detail: { node: s.cfg.name, reason: w.why, ms: Math.round(s.now - w.startedAt) } });
      log(ctx, 'warn', `restarted the VM alone in ${ms(s.now - w.startedAt)}`);
      sendHeartbeat(ctx);
      return;
    case 'fence': {
      s.work = null;
      succeeded(s, 'fence');
      const from = w.from === 'primary' || w.from === 'secondary' || w.from === 'alone' ? w.from : 'alone';
      s.qemu.paused = true;
      if (w.from === 'fenced') return;
      fenceAs(s, from, w.why);
      emit(ctx, { t: 'record', event: 'fence', detail: { node: s.cfg.name, from, reason: w.why } });
      sendHeartbeat(ctx);
      return;
    }
    case 'unfence': {
      s.work = null;
      succeeded(s, 'unfence');
      const from = s.fence?.from ?? 'alone';
      s.qemu.paused = false;
      // A primary's COLO was broken by the fence's yank: it comes back as a primary out of COLO and fails over.
      if (from === 'primary' && s.qemu.coloExitAt === null) s.qemu.coloExitAt = s.now;
      setRole(s, from === 'secondary' ? 'secondary' : from);
      emit(ctx, { t: 'record', event: 'unfence', detail: { node: s.cfg.name, to: s.role, reason: w.why } });
      sendHeartbeat(ctx);
      return;
    }
    case 'reprotect':
      return reprotectProcDone(ctx, w);
    case 'join':
      return joinProcDone(ctx, w, pid);
  }
}

function procFailed(ctx: Ctx, id: string, stepsDone: number, error: string): void {
  const s = ctx.s;
  const w = s.work;
  if (!w || !('procId' in w) || w.procId !== id) {
    log(ctx, 'warn', `a procedure no longer awaited failed: ${error}`);
    return;
  }
  s.qemu.procedureEndedAt = s.now;
  switch (w.kind) {
    case 'primary-failover':
    case 'takeover':
    case 'restart':
    case 'fence':
    case 'unfence':
      s.work = null;
      failed(ctx, w.kind, error, w.kind === 'restart' ? 0 : stepsDone);
      return;
    case 'reprotect':
      if (w.phase === 'resuming') return reprotectFailed(ctx, error);
      // Taking it back failed too: the VM may be left stopped; try again soon, with a failover's back-off (what runs
      // the VM again is never held back by the resync's long one: focus schedule 1,473 of resync-done-said-once).
      s.work = null;
      failed(ctx, planted('take-back-retried-as-resync') ? 'reprotect' : 'abort-resume', `taking back a failed resync failed: ${error}`);
      s.qemu.leftovers = s.qemu.state === 'alive';
      return;
    case 'join':
      return joinFailed(ctx, error);
  }
}

// ---- re-protection (the survivor's side) ----

function beginReprotect(ctx: Ctx, why: string): void {
  const s = ctx.s;
  invariant(s.role === 'alone' && s.disk.epoch !== undefined, 'only a node running the VM alone resyncs its peer');
  const id = newId(s);
  s.work = { kind: 'reprotect', phase: 'asking', why, startedAt: s.now, coloSince: null, reqId: id, procId: null, step: `asking ${s.cfg.peer} for a new secondary`, mirror: null, error: null, deadline: s.now + PREPARE_TIMEOUT_MS, targetPid: null, cont: true };
  addPending(ctx, { id, to: 'peer', what: 'resync-prepare', sentAt: s.now, deadline: s.now + PREPARE_TIMEOUT_MS });
  emit(ctx, { t: 'send-peer', path: 'any', msg: { t: 'req', id, body: { k: 'resync-prepare', primary: s.cfg.name, disk: s.disk.epoch, sizeBytes: s.disk.sizeBytes, boot: s.boot } } });
}

function peerReply(ctx: Ctx, r: PeerReply): void {
  const s = ctx.s;
  const p = takePending(s, r.re);
  if (!p) return;
  if (p.what === 'resync-done') {
    s.handover = null;
    if (r.ok) log(ctx, 'info', `${s.cfg.peer} took its new secondary over`);
    else log(ctx, 'error', `${s.cfg.peer} did not take its new secondary over: ${r.why ?? 'no reason given'}`);
    return;
  }
  const w = s.work;
  if (w?.kind !== 'reprotect' || w.reqId !== r.re) return;
  w.reqId = null;
  if (w.phase === 'asking') {
    if (!r.ok) return reprotectFailed(ctx, `${s.cfg.peer} could not start a new secondary: ${r.why ?? 'no reason given'}`);
    w.phase = 'resuming';
    w.step = 'the new secondary waits: mirroring our disk to it';
    w.procId = newId(s);
    w.targetPid = r.pid ?? null;
    // A new replica: what the last one missed does not count against it.
    s.qemu.replicaBadAt = null;
    s.qemu.replicaShort = false;
    log(ctx, 'info', `${s.cfg.peer}'s new secondary waits (pid ${r.pid ?? '?'}): resuming replication`);
    // The pair's record names the new secondary's QEMU by the pid its agent gave in answer to this request; without
    // one, 0: the record then names no process for it (its own agent records it once it adopts it).
    emit(ctx, { t: 'run', id: w.procId, procedure: { kind: 'resume', targetPid: w.targetPid ?? 0 }, fromStep: 0 });
  }
}

function reprotectProcDone(ctx: Ctx, w: Extract<Work, { kind: 'reprotect' }>): void {
  const s = ctx.s;
  if (w.phase === 'aborting') {
    s.work = null;
    s.qemu.leftovers = false;
    succeeded(s, 'abort-resume');
    if (w.error) failed(ctx, 'reprotect', w.error);
    if (!w.cont) {
      // The take-back stopped our VM: the lease ran out during the resync; it runs again once the lease is ours.
      s.qemu.paused = true;
      fenceAs(s, 'alone', 'the lease ran out while a resync was taken back');
      emit(ctx, { t: 'record', event: 'fence', detail: { node: s.cfg.name, from: 'alone', reason: s.fence!.why } });
      log(ctx, 'warn', `resync given up (${w.error ?? 'taken back'}): our VM is stopped until the lease is ours again`);
      sendHeartbeat(ctx);
      return;
    }
    // abort-resume lets a VM the resume had stopped run again.
    s.qemu.paused = false;
    if (w.error) log(ctx, 'warn', `resync given up (${w.error}): running on alone`);
    return;
  }
  // In COLO again, as the primary: protected, unless the new replica already missed a write (replicaBadAt) or the new
  // session already ended (its COLO_EXIT, kept: the primary then fails over as from any COLO_EXIT).
  succeeded(s, 'reprotect');
  if (s.qemu.coloExitAt !== null && (w.coloSince === null || s.qemu.coloExitAt < w.coloSince || planted('resume-forgets-its-colo-exit'))) s.qemu.coloExitAt = null;
  // The resume waited for the first checkpoint (when we saw it complete, else now); COLO runs the VM again.
  s.qemu.paused = false;
  if (!(s.qemu.lastCheckpointAt > w.startedAt)) s.qemu.lastCheckpointAt = s.now;
  s.qemu.checkpointSeen = true;
  s.qemu.checkpointSince = null;
  setRole(s, 'primary');
  emit(ctx, { t: 'record', event: 'resync', detail: { from: s.cfg.name, to: s.cfg.peer, ms: Math.round(s.now - w.startedAt) } });
  if (s.qemu.coloExitAt === null) log(ctx, 'warn', `protected again in ${ms(s.now - w.startedAt)}`);
  else log(ctx, 'error', `resync done in ${ms(s.now - w.startedAt)}, but its new COLO session ended already (COLO_EXIT): failing over again`);
  // The target takes the new secondary over once it knows our epoch is on its disk: told until it answers.
  s.work = null;
  s.handover = { epoch: s.disk.epoch!, until: s.now + HANDOVER_TIMEOUT_MS };
  tellResyncDone(ctx);
  sendHeartbeat(ctx);
}

function tellResyncDone(ctx: Ctx): void {
  const s = ctx.s;
  const id = newId(s);
  addPending(ctx, { id, to: 'peer', what: 'resync-done', sentAt: s.now, deadline: s.now + 1000 });
  emit(ctx, { t: 'send-peer', path: 'any', msg: { t: 'req', id, body: { k: 'resync-done', disk: s.handover!.epoch } } });
}

/** Tells the new secondary's agent again that the resync is done, while it still waits for that word. */
function handOver(ctx: Ctx): void {
  const s = ctx.s;
  const h = s.handover;
  if (!h) return;
  const hb = peerWord(s);
  // Done when the peer says it is our secondary (it took the new QEMU over), or when we are no longer its primary.
  if (s.role !== 'primary' || s.now > h.until || (hb && hb.busy === null && hb.role === 'secondary')) {
    s.handover = null;
    return;
  }
  if (!s.pending.some((p) => p.what === 'resync-done' && !p.expired) && !planted('resync-done-said-once')) tellResyncDone(ctx);
}

function reprotectFailed(ctx: Ctx, error: string): void {
  const s = ctx.s;
  const w = s.work;
  invariant(w?.kind === 'reprotect', 'a resync is under way');
  decide(ctx, 'abort-resync', `resync failed: ${error}`);
  const id = newId(s);
  emit(ctx, { t: 'send-peer', path: 'any', msg: { t: 'req', id, body: { k: 'resync-abort', why: error.slice(0, 500) } } });
  if (s.qemu.state !== 'alive') {
    s.work = null;
    failed(ctx, 'reprotect', error);
    return;
  }
  // Take the half-done resume back: the VM runs on alone.
  w.phase = 'aborting';
  w.error = error;
  w.reqId = null;
  w.procId = newId(s);
  w.step = 'taking the resync back';
  w.cont = mayRunAlone(s);
  emit(ctx, { t: 'run', id: w.procId, procedure: { kind: 'abort-resume', cont: w.cont }, fromStep: 0 });
}

// ---- re-protection (the target's side) ----

function reply(ctx: Ctx, re: string, ok: boolean, why?: string, pid?: number): void {
  emit(ctx, { t: 'send-peer', path: 'any', msg: { t: 'rep', re, ok, ...(why !== undefined ? { why } : {}), ...(pid !== undefined ? { pid } : {}) } });
}

function peerRequest(ctx: Ctx, id: string, body: PeerRequestBody): void {
  const s = ctx.s;
  const w = s.work;
  if (body.k === 'resync-prepare') {
    if (w?.kind === 'join' && w.phase === 'ready') {
      // The survivor started over (its agent may have restarted): drop the old new secondary, then prepare again.
      decide(ctx, 'drop-secondary', 'the survivor asks for a new secondary again');
      w.phase = 'dropping';
      w.reqId = id;
      w.primary = body.primary;
      w.epoch = body.disk;
      w.sizeBytes = body.sizeBytes;
      w.peerBoot = survivorBoot(s, body);
      w.peerSeq = s.peer.seq;
      w.procId = newId(s);
      emit(ctx, { t: 'run', id: w.procId, procedure: { kind: 'drop-secondary' }, fromStep: 0 });
      return;
    }
    if (w) return reply(ctx, id, false, `${s.cfg.name} is busy (${w.kind})`);
    if (!(s.role === 'down' || s.role === 'fenced')) return reply(ctx, id, false, `${s.cfg.name} is ${s.role}`);
    const order = compareEpochs(s.disk.epoch, body.disk);
    if ((order === 'newer' || order === 'divergent') && !planted('resync-towards-newer')) {
      decide(ctx, 'refuse-resync', `refusing to be resynced from ${body.primary}: our disk (${formatEpoch(s.disk.epoch)}) is ${order} than/to theirs (${formatEpoch(body.disk)})`);
      return reply(ctx, id, false, `the disk of ${s.cfg.name} (${formatEpoch(s.disk.epoch)}) is ${order}, not older than ${formatEpoch(body.disk)}`);
    }
    decide(ctx, 'prepare-secondary', `${body.primary} resyncs us: starting a new secondary`);
    const procId = newId(s);
    s.work = { kind: 'join', phase: 'preparing', why: `resync from ${body.primary}`, startedAt: s.now, reqId: id, primary: body.primary, epoch: body.disk, procId, deadline: 0, pid: null, peerBoot: survivorBoot(s, body), peerSeq: s.peer.seq, sizeBytes: body.sizeBytes };
    emit(ctx, { t: 'run', id: procId, procedure: { kind: 'prepare-secondary', primary: body.primary, sizeBytes: body.sizeBytes }, fromStep: 0 });
    return;
  }
  if (body.k === 'resync-done') {
    // Told again while we take it over, or after: the answer to the first one says it all.
    if (w?.kind === 'join' && (w.phase === 'persisting' || w.phase === 'adopting')) return;
    if (!w && s.role === 'secondary' && epochEquals(s.disk.epoch, body.disk)) return reply(ctx, id, true);
    if (w?.kind !== 'join' || w.phase !== 'ready') return reply(ctx, id, false, 'no new secondary here');
    // A peer's message is input, not our logic: one that would take our disk's epoch back is refused as invalid (the
    // resync-prepare we accepted carried an epoch not older than ours), and the resync waits for a valid word or ends.
    const order = compareEpochs(body.disk, s.disk.epoch);
    if (order === 'older' || order === 'divergent') {
      const why = `refused resync-done: its epoch ${formatEpoch(body.disk)} is ${order} than/to our disk's ${formatEpoch(s.disk.epoch)}`;
      log(ctx, 'warn', `${s.cfg.peer}: ${why}`);
      return reply(ctx, id, false, why);
    }
    w.phase = 'persisting';
    w.reqId = id;
    w.epoch = body.disk;
    // The mirror is done: our disk lacks nothing the primary's has. The note goes first, before the record that makes
    // the resync ours; an agent started in between forgets it a little early, never wrongly keeps it (which would bar
    // a whole replica from taking over). In memory, both stay until the new secondary is ours (adopting).
    if (s.disk.missedWriteAt !== null || s.disk.forwardedWriteFailedAt !== null) noteReplica(ctx, `resynced from ${w.primary}`, { missedWrite: false, forwardedWriteFailed: false });
    persist(ctx, body.disk, undefined, `resync from ${w.primary}`);
    return;
  }
  // resync-abort
  reply(ctx, id, true);
  if (w?.kind === 'join' && (w.phase === 'ready' || w.phase === 'preparing')) {
    decide(ctx, 'drop-secondary', `the survivor gave the resync up: ${body.why}`);
    if (w.phase === 'ready') leaveJoin(ctx);
    else w.deadline = -1; // dropped as soon as it is prepared
  }
}

/**
 * The incarnation of the survivor's agent that asks us: said in the request, or (an older agent) the one we last
 * heard, unknown when we heard none yet; the mutant's agent never says it (focus schedule 513 of
 * pending-epoch-not-carried: asked 53 ms after our start, the survivor's restart went unnoticed for the join's bound).
 */
function survivorBoot(s: CoreState, body: Extract<PeerRequestBody, { k: 'resync-prepare' }>): string | null {
  if (planted('resync-target-ignores-survivor-boot')) return s.peer.boot;
  return body.boot ?? s.peer.boot;
}

/** The survivor no longer resyncs us (its agent restarted, or it is in no state to), though its word of it was lost. */
function survivorGaveUp(s: CoreState, w: Extract<Work, { kind: 'join' }>): string | null {
  const hb = peerWord(s);
  if (!hb || planted('join-waits-for-a-gone-survivor')) return null;
  if (w.peerBoot !== null && hb.boot !== w.peerBoot) return `${s.cfg.peer}'s agent restarted: it knows nothing of this resync`;
  // Only what it said after it asked counts.
  if (hb.boot === w.peerBoot && hb.seq <= w.peerSeq) return null;
  if (hb.role === 'down' || hb.role === 'fenced' || hb.role === 'secondary') return `${s.cfg.peer} is ${hb.role}: the resync is over`;
  if (hb.role === 'alone' && hb.busy !== 'reprotect') return `${s.cfg.peer} runs alone and no longer resyncs us`;
  return null;
}

function leaveJoin(ctx: Ctx): void {
  const s = ctx.s;
  const w = s.work;
  invariant(w?.kind === 'join', 'joining');
  w.phase = 'leaving';
  w.procId = newId(s);
  emit(ctx, { t: 'run', id: w.procId, procedure: { kind: 'drop-secondary' }, fromStep: 0 });
}

function joinProcDone(ctx: Ctx, w: Extract<Work, { kind: 'join' }>, pid?: number): void {
  const s = ctx.s;
  switch (w.phase) {
    case 'dropping': {
      w.phase = 'preparing';
      w.procId = newId(s);
      emit(ctx, { t: 'run', id: w.procId, procedure: { kind: 'prepare-secondary', primary: w.primary, sizeBytes: w.sizeBytes }, fromStep: 0 });
      return;
    }
    case 'preparing':
      if (w.deadline === -1) return leaveJoin(ctx);
      w.phase = 'ready';
      w.pid = pid ?? null;
      w.procId = null;
      w.deadline = s.now + s.cfg.joinTimeoutMs;
      reply(ctx, w.reqId, true, undefined, pid);
      return;
    case 'adopting':
      s.work = null;
      if (!(s.role === 'secondary' && s.qemu.state === 'alive')) {
        // It died as we took it over.
        reply(ctx, w.reqId, false, 'the new secondary ended as it was taken over');
        return;
      }
      s.qemu.lastCheckpointAt = s.now;
      if (s.disk.missedWriteAt !== null || s.disk.forwardedWriteFailedAt !== null) {
        // On disk it went at resync-done, unless a word came since.
        s.disk.missedWriteAt = null;
        s.disk.forwardedWriteFailedAt = null;
        noteReplica(ctx, `resynced from ${w.primary}`);
      }
      reply(ctx, w.reqId, true);
      log(ctx, 'warn', `resynced from ${w.primary}: secondary again, disk ${formatEpoch(s.disk.epoch)}`);
      sendHeartbeat(ctx);
      return;
    case 'leaving':
      s.work = null;
      log(ctx, 'warn', 'resync given up: the new secondary is ended');
      return;
    default:
      return;
  }
}

function joinFailed(ctx: Ctx, error: string): void {
  const s = ctx.s;
  const w = s.work;
  invariant(w?.kind === 'join', 'joining');
  log(ctx, 'error', `as the target of a resync: ${error}`);
  if (w.phase === 'preparing' || w.phase === 'dropping') {
    // Nothing of it is left (prepare-secondary cleans up after itself).
    reply(ctx, w.reqId, false, error);
    s.work = null;
    return;
  }
  if (w.phase === 'persisting' || w.phase === 'adopting') {
    reply(ctx, w.reqId, false, error);
    // A new secondary nobody supervises must not run on: end it.
    return leaveJoin(ctx);
  }
  s.work = null;
}

// ---- status ----

/**
 * Protected: COLO runs and its checkpoints flow, as this node sees it (a
 * slow checkpoint under way still counts, until it is overdue).
 */
export function isProtected(s: CoreState): boolean {
  const q = s.qemu;
  if (!(s.role === 'primary' || s.role === 'secondary') || q.state !== 'alive' || q.paused || s.work !== null || !q.checkpointSeen || q.replicaBadAt !== null) return false;
  if (q.coloExitAt !== null && !planted('protected-after-colo-exit')) return false;
  if (stalled(s) !== null && !planted('protected-despite-stall')) return false;
  if (s.role === 'secondary') return primaryVouchesForReplica(s);
  return peerFresh(s) || probeResult(s, 'qemu', PROTECTED_PROBE_MS)?.alive === true;
}

/**
 * Since when our primary's word says our disk may lack a write it acknowledged (a checkpoint made it short, or a
 * write it forwarded failed), where that bars a restart from it: not under an epoch of our own (chooseDown).
 */
function shortReplicaSince(s: CoreState): number | null {
  const short = s.disk.missedWriteAt ?? s.disk.forwardedWriteFailedAt;
  return short !== null && (s.disk.epoch?.by !== s.cfg.name || planted('short-replica-after-own-takeover')) ? short : null;
}

/** Our disk is our peer's replica, or was its last one: we are its secondary, or stopped since. */
function replicaOfPeer(s: CoreState): boolean {
  return s.role === 'secondary' || s.role === 'down' || (s.role === 'fenced' && s.fence?.from === 'secondary');
}

/**
 * A secondary's replica is exact only on its primary's current word: a replica write that fails is seen by the
 * primary's QEMU alone (QUORUM_REPORT_BAD), so while the primary's agent is silent nobody knows it (seed 1,019,804
 * of the soak: the primary's agent blocked by a slow disk, its yank failed, and the secondary said PROTECTED
 * for a replica that lacked an acknowledged write).
 */
function primaryVouchesForReplica(s: CoreState): boolean {
  if (planted('secondary-protected-without-primary-word')) return true;
  const peer = peerWord(s);
  return peer !== null && peer.role === 'primary' && peer.replicaExact !== false && s.disk.missedWriteAt === null;
}

export function statusOf(s: CoreState): CoreStatus {
  const now = s.now;
  const fresh = peerFresh(s);
  const peer = s.peer.hb;
  const st = stalled(s);
  const q = s.qemu;
  const inColo = (s.role === 'primary' || s.role === 'secondary') && q.state === 'alive' && q.coloExitAt === null;
  const checkpointAgeMs = inColo ? now - q.lastCheckpointAt : null;
  const degraded: string[] = [];
  if (s.role === 'alone') degraded.push(`running alone, unprotected, for ${ms(now - s.roleSince)}`);
  if (s.role === 'fenced') degraded.push(`fenced for ${ms(now - s.fence!.at)}: ${s.fence!.why}`);
  if (s.role === 'down') degraded.push(q.state === 'attaching' ? 'attaching to our QEMU' : 'our QEMU is not running');
  if (st) degraded.push(st.inCheckpoint ? `replication stalled: a checkpoint has not completed for ${ms(st.ms)}` : `replication stalled: no checkpoint for ${ms(st.ms)}`);
  if (q.coloExitAt !== null && (s.role === 'primary' || s.role === 'secondary')) degraded.push(`COLO ended ${ms(now - q.coloExitAt)} ago`);
  if (q.replicaBadAt !== null && s.role === 'primary') degraded.push(`the secondary's replica missed a write ${ms(now - q.replicaBadAt)} ago: it is no exact copy`);
  if (s.role === 'secondary' && fresh && peer?.replicaExact === false && s.disk.missedWriteAt === null) degraded.push(`${s.cfg.peer} says our replica missed a write: it is no exact copy`);
  const forwardFailedAt = s.disk.missedWriteAt === null && s.role !== 'primary' && s.role !== 'alone' ? shortReplicaSince(s) : null;
  if (forwardFailedAt !== null) degraded.push(`${s.cfg.peer} said a write it forwarded to our disk failed ${ms(now - forwardFailedAt)} ago: our disk starts no VM before a resync`);
  if (s.role === 'secondary' && s.disk.missedWriteAt !== null) degraded.push(`${s.cfg.peer} said our replica missed a write ${ms(now - s.disk.missedWriteAt)} ago: it is no exact copy`);
  if (s.role === 'secondary' && fresh && peer && peer.role !== 'primary') degraded.push(`${s.cfg.peer} is ${peer.role}, not our primary`);
  if (!fresh) degraded.push(`no heartbeat from ${s.cfg.peer} for ${lastHeard(s) === null ? 'ever' : ms(now - lastHeard(s)!)}`);
  else {
    s.peer.paths.forEach((p, i) => {
      if (p.lastHeardAt === null || now - p.lastHeardAt >= s.cfg.heartbeatTimeoutMs) degraded.push(`heartbeat path ${i + 1} down`);
      else if (p.lastAckAt !== null && now - p.lastAckAt >= s.cfg.heartbeatTimeoutMs) degraded.push(`heartbeat path ${i + 1} down one way: ours unacked for ${ms(now - p.lastAckAt)}`);
    });
  }
  if (s.cfg.witness) {
    const since = s.lease.lastAnswerAt;
    if (since === null ? !starting(s) : now - since > 2 * s.cfg.leaseMs) degraded.push(`witness unreachable${since === null ? '' : ` for ${ms(now - since)}`}`);
    if (staleDisk(s)) degraded.push('stale disk: the witness knows a newer epoch; waiting to be resynced');
  }
  if (!s.disk.epoch) degraded.push('our disk\'s epoch is unknown (its record is missing or unreadable)');
  if (s.disk.pending) degraded.push(`new epoch ${formatEpoch(s.disk.pending)} not confirmed by the witness yet`);
  if (peer && fresh && peer.disk === null) degraded.push(`${s.cfg.peer}'s disk epoch is unknown`);
  const retry = Object.entries(s.attempts)
    .filter(([, a]) => a && a.failures > 0)
    .map(([kind, a]) => ({ kind, failures: a!.failures, inMs: Math.max(0, Math.round(a!.notBefore - now)), lastError: a!.lastError }));
  for (const r of retry) degraded.push(`${r.kind} failed ${r.failures}× (next try in ${ms(r.inMs)}): ${r.lastError}`);
  const w = s.work;
  const last = s.decisions.at(-1);
  return {
    node: s.cfg.name,
    role: s.role,
    roleForMs: Math.round(now - s.roleSince),
    protected: isProtected(s),
    degraded,
    fence: s.fence && { why: s.fence.why, from: s.fence.from, forMs: Math.round(now - s.fence.at) },
    qemu: { state: q.state, coloExited: q.coloExitAt !== null, checkpointAgeMs: checkpointAgeMs === null ? null : Math.round(checkpointAgeMs), inCheckpointMs: q.checkpointSince === null ? null : Math.round(now - q.checkpointSince), paused: q.paused },
    peer: {
      name: s.cfg.peer,
      paths: s.peer.paths.map((p) => ({ up: p.up, lastHeardMs: p.lastHeardAt === null ? null : Math.round(now - p.lastHeardAt) })),
      role: peer?.role ?? null,
      qemu: fresh ? (peer?.qemu ?? 'unknown') : 'unknown',
      hearsUs: fresh && peer?.hearsPeer === true,
      rttMs: s.peer.rttMs === null ? null : Math.round(s.peer.rttMs * 100) / 100,
      disk: peer?.disk ?? null,
    },
    lease: {
      witness: s.cfg.witness,
      held: s.cfg.witness && leaseValid(s),
      remainingMs: s.cfg.witness && leaseValid(s) ? Math.round(s.lease.until - now) : null,
      witnessAnswerMs: s.lease.lastAnswerAt === null ? null : Math.round(now - s.lease.lastAnswerAt),
      lastRefusal: s.lease.lastRefusal && `${s.lease.lastRefusal.reason}${s.lease.lastRefusal.holder ? ` (holder ${s.lease.lastRefusal.holder})` : ''}`,
      stale: staleDisk(s),
    },
    disk: { epoch: s.disk.epoch ?? null, pending: s.disk.pending ?? null },
    work: w && {
      kind: w.kind,
      phase: 'phase' in w ? w.phase : null,
      why: w.why,
      runningMs: Math.round(now - w.startedAt),
      step: w.kind === 'reprotect' ? w.step : null,
      mirror: w.kind === 'reprotect' ? w.mirror : null,
    },
    retry,
    lastDecision: last ? `${last.action}: ${last.why}` : null,
    waiting: s.waiting,
  };
}
