/**
 * What the simulator checks, each a rule with a name (a violation names the
 * rule it breaks, and a planted bug must be caught by the invariant of its
 * own rule: mutants.ts):
 *
 * safety, after every event
 * - single-writer: never two writers of the VM;
 * - lease-before-writing-alone: with a witness, a node begins to write alone
 *   (a takeover, a failover, a restart, an unfence) only while the witness's
 *   lease is its, by the witness's own clock;
 * - epoch-before-writing-alone: ... and only once a new epoch of its own is
 *   on its disk and (with a witness) recorded as the newest at the witness;
 * - acked-write-kept: no acknowledged write is missing from the disk of
 *   whichever node runs the VM;
 * - resync-direction: a resync never overwrites a disk that holds an
 *   acknowledged write its source lacks;
 * - procedure-steps: a retried procedure never skips a step that is not done;
 * - core-invariant: the core's own assertions (an epoch never goes back, ...);
 *
 * status, at every agent tick
 * - status-truth: an agent says PROTECTED only while its QEMU is in a COLO
 *   session whose checkpoints flow: one completed within stallMs, or one under
 *   way for less than checkpointTimeoutMs (the core's own bounds, plus one tick);
 * - replica-exact: nobody says PROTECTED once the secondary's disk lacks an
 *   acknowledged write (a replica write that failed before a checkpoint), past
 *   the time to react;
 *
 * promptness
 * - prompt-takeover: with a witness, when the host of a protected primary is
 *   lost alone (power, reboot, gone, or paused for longer than this bound),
 *   while its secondary's host, agent and disk are fine and it reaches the
 *   witness, the secondary decides to take over within promptTakeoverMs:
 *   the heartbeat timeout (the host probe, sent ahead of it, has answered by
 *   then) and a few ticks' slack (no waiting for the checkpoint stream to
 *   stall, nor for a probe sent late). Judged only where no other fault lasts
 *   into that window;
 * - prompt-cut: when the replication link alone is cut, both ways or one
 *   way (longer than this bound), between a protected primary and its secondary, and a
 *   heartbeat path runs over it while another runs elsewhere, the primary
 *   decides to carry on alone within promptCutMs: the heartbeat timeout and
 *   a few ticks (no waiting for the checkpoint stream to stall). Judged only
 *   where no other fault lasts into that window;
 * - restart-kept: an agent of a protected pair killed and started again (a
 *   daemon restart: its QEMU runs on) breaks nothing: until RESTART_KEPT_MS
 *   after it is back, neither agent decides to fail over, take over or fence.
 *   Judged only where no other fault lasts into that window;
 *
 * liveness
 * - liveness-during-faults: while a node holds every acknowledged write and
 *   the newest epoch, runs its agent, and reaches the arbiter (the witness;
 *   without one, the other agent, whose word is the arbiter), the VM runs
 *   within RUN_DURING_FAULTS_MS, fault or no fault;
 * - liveness-after-faults: once the faults stop, the VM runs again within
 *   RUN_BOUND_MS;
 * - protected-after-faults: ... and is protected again within
 *   PROTECT_BOUND_MS, and stays so (unless a host is gone for good).
 */
import { CLOCK_DRIFT_MAX, isProtected, leaseStopMarginMs, probeSilenceMs } from '../node/core/core.js';
import type { CoreConfig } from '../node/core/types.js';
import { PROBE_TIMEOUT_MS, TICK_MS } from '../node/driver.js';
import { DEFAULT_GRACE_MS } from '../node/witness.js';
import { compareEpochs, type Epoch } from '../pair/epoch.js';
import type { World, Host } from './world.js';
import type { SimQemu, Session } from './qemu.js';
import { faultMs, witnessLink, type End, type Fault, type NodeName } from './schedule-types.js';

export const VIOLATION_KINDS = [
  'single-writer',
  'lease-before-writing-alone',
  'epoch-before-writing-alone',
  'acked-write-kept',
  'resync-direction',
  'procedure-steps',
  'core-invariant',
  'core-error',
  'status-truth',
  'replica-exact',
  'prompt-takeover',
  'prompt-cut',
  'restart-kept',
  'liveness-during-faults',
  'liveness-after-faults',
  'protected-after-faults',
  'livelock',
] as const;
export type ViolationKind = (typeof VIOLATION_KINDS)[number];

export interface Violation {
  kind: ViolationKind;
  at: number;
  detail: string;
}

/** How long after the faults stop the VM must run again, and be protected again. */
export const RUN_BOUND_MS = 45_000;
export const PROTECT_BOUND_MS = 90_000;
/** While faults last: the VM runs within this long of a node being able to run it (the newest disk, the arbiter reachable). */
export const RUN_DURING_FAULTS_MS = 45_000;
/** And stay protected this long, at the end. */
export const STABLE_MS = 10_000;
/** Events at one instant of simulated time, at most: more is a livelock (an agent or a model answering itself forever). */
export const EVENTS_PER_INSTANT_MAX = 10_000;
/** A QMP event (COLO_EXIT, RESUME) reaches the agent (≤ 2 ms) and is seen at its next tick (TICK_MS, and a little jitter). */
const EVENT_SEEN_MS = TICK_MS + 10;
/**
 * Once the secondary's disk lacks an acknowledged write, the agents stop saying PROTECTED within this long: the
 * primary at its next tick after QUORUM_REPORT_BAD, the secondary once its primary's word says so or falls silent
 * (its heartbeat timeout after the last word, which may have been on its way when the write failed).
 */
function replicaReactMs(heartbeatTimeoutMs: number): number {
  return heartbeatTimeoutMs + 2 * EVENT_SEEN_MS;
}

/** The faults after which a secondary must decide to take over promptly: its primary's host stops answering anything. */
const HOST_LOSSES: ReadonlySet<Fault['kind']> = new Set(['power-loss', 'reboot', 'host-gone', 'host-pause']);

/**
 * A protected primary's host lost alone: its secondary decides to take over within this long. Its last heartbeat
 * came just before the loss; the host probe goes out a probe's bound before the heartbeat timeout (core.ts,
 * probeSilenceMs), so its answer is in when the primary counts as silent; then a few ticks for the agent to see each
 * of these. A probe sent only at the heartbeat timeout is a probe's bound late (mutant probe-at-heartbeat-timeout).
 */
export function promptTakeoverMs(cfg: CoreConfig): number {
  return Math.max(cfg.heartbeatTimeoutMs, probeSilenceMs(cfg) + PROBE_TIMEOUT_MS) + PROMPT_SLACK_MS;
}

/**
 * The replication link alone cut under a protected primary that hears its secondary on another path: it decides to
 * carry on alone within this long. The path over the link falls silent at the cut (its last heartbeat came before),
 * and no checkpoint completes after it; the heartbeat timeout later both have lasted long enough (core.ts,
 * replicationCut), then a few ticks. Waiting for the stall bound is seconds late (mutant cut-waits-for-stall).
 */
export function promptCutMs(cfg: CoreConfig): number {
  return cfg.heartbeatTimeoutMs + PROMPT_SLACK_MS;
}

/**
 * How late a lease's grant may come and still let its holder begin to write alone: the lease counts from the request,
 * shortened by both clocks' drift, and must then be more than a stop margin (a quarter of it) ahead (core.ts, leaseAhead).
 */
function usableLeaseMs(cfg: CoreConfig): number {
  return cfg.leaseMs * (1 - 2 * CLOCK_DRIFT_MAX) - leaseStopMarginMs(cfg);
}

/**
 * How long after a killed agent is started again restart-kept watches: its heartbeats resume on every path (one may be
 * back before another: the lab's daemon restart, where the primary took the replication path's silence from before
 * the restart for a cut), it attaches to its QEMU again, then a heartbeat timeout and a little more.
 */
export const RESTART_KEPT_MS = 3000;

/** What restart-kept forbids while it watches: a decision that ends the pair. */
const PAIR_ENDING: ReadonlySet<string> = new Set(['primary-failover', 'takeover', 'fence']);

/** promptTakeoverMs's room for the ticks that see the silence, the probe's answer and the decision (TICK_MS each). */
export const PROMPT_SLACK_MS = 5 * TICK_MS;

/**
 * A disk record is the newest the witness knows: its epoch is, or the epoch
 * its node asked the witness to record (pending) is, which the witness did:
 * that node may write it on its disk and run (core.ts, commit-recorded).
 */
function holdsNewest(record: { epoch: Epoch; pending: Epoch | undefined }, newest: Epoch): boolean {
  const o = compareEpochs(record.epoch, newest);
  return o === 'same' || o === 'newer' || (record.pending !== undefined && compareEpochs(record.pending, newest) === 'same');
}

/**
 * The node's QEMU is gone and its disk lacks a write its primary forwarded to it, which failed there and which the
 * other disk holds: such a disk holds every acknowledged write only by luck. Its agent, told by the primary that a
 * forwarded write failed, cannot know whether that write was acknowledged (it was, in soak seed 12,624,199: the
 * secondary's VM had made it itself and answered), so it waits for the other disk rather than restart from its own
 * (core.ts, chooseDown) and is not required to run the VM (soak seeds 12,710,479 and 12,812,470: the primary's disk
 * record lost, nobody ran the VM, an operator's call). A secondary's running VM is no such gamble: it goes on from
 * the last checkpoint, and made any write of the primary's that could be acknowledged since (its active disk).
 */
function lacksAFailedForward(w: World, h: Host): boolean {
  if (h.qemu?.alive && !h.qemu.incoming) return false;
  const other = w.hosts[h.peer];
  for (const x of h.forwardFailed) if (!h.disk.has(x) && other.disk.has(x)) return true;
  return false;
}

/** Faults after which the witness starts again, and grants nothing for its grace period (node/witness.ts). */
const WITNESS_STARTS: ReadonlySet<Fault['kind']> = new Set(['witness-down', 'witness-restart', 'witness-amnesia']);

/** Until when a fault lasts, for the judgment of a fault alone (a witness started again grants nothing for its grace). */
function lastsUntil(g: Fault): number {
  return g.at + faultMs(g) + ('delayMs' in g ? g.delayMs : 0) + (WITNESS_STARTS.has(g.kind) ? DEFAULT_GRACE_MS : 0);
}

/**
 * Another fault lasts into the window of fault `f` (`boundMs` long): `f` is not alone (soak seed 10,006,251: disk
 * errors on the lost host and a slow replication link, both begun before the host loss, lasted into the window). A
 * slow link's or disk's effects last its delay longer than the fault (soak seed 12,230,593: a's heartbeats sent on the
 * slow replication path before its host paused came up to 526 ms late, after the slow link had ended; b heard a until
 * then). A witness started again grants nothing for its grace period (soak seed 12,601,316: restarted 0.8 s before
 * b's agent was killed, it let a's lease run out, and with nobody to vouch for it a fenced).
 */
function othersInWindow(faults: readonly Fault[], f: Fault, boundMs: number): boolean {
  return faults.some((g) => g !== f && g.at <= f.at + boundMs && lastsUntil(g) >= f.at);
}

export class Invariants {
  readonly violations: Violation[] = [];
  private readonly kinds = new Set<ViolationKind>();
  /** QEMUs writing alone now (by pid), to see when one begins. */
  private alone = new Set<number>();
  private lastWriter: SimQemu | null = null;
  runAgainAt: number | null = null;
  protectedAgainAt: number | null = null;
  private protectedSince: number | null = null;
  stable = false;
  /** Liveness during faults: since when some node could run the VM, and whether it ran since. */
  private ableSince: number | null = null;
  private ableWhy = '';
  private ranSinceAble = false;
  /** The longest the VM took to run again while some node could run it (during faults or not), for the report. */
  longestDownWhileAbleMs = 0;
  /** Since when the secondary's disk lacks an acknowledged write (committed at a checkpoint). */
  private replicaShortSince: number | null = null;
  /** A protected primary's host lost alone: its secondary must decide to take over by `by`. */
  private hostLoss: { secondary: NodeName; at: number; by: number; kind: Fault['kind'] } | null = null;
  /** For the report: host losses judged by prompt-takeover, and the slowest decision among them. */
  hostLossesJudged = 0;
  slowestTakeoverMs = 0;
  /** A protected primary's replication link alone cut: it must decide to carry on alone by `by`. */
  private cut: { primary: NodeName; at: number; by: number; from: End | undefined } | null = null;
  /** For the report: replication cuts prompt-cut judged, and the slowest decision among them. */
  cutsJudged = 0;
  slowestCutMs = 0;
  /** A protected pair's agent killed and started again: no decision that ends the pair until `until`. */
  private restart: { node: NodeName; at: number; until: number } | null = null;
  /** For the report: agent restarts restart-kept judged. */
  restartsJudged = 0;

  constructor(private readonly w: World) {}

  violation(kind: ViolationKind, detail: string): void {
    if (this.kinds.has(kind) && this.violations.filter((v) => v.kind === kind).length >= 3) return;
    this.kinds.add(kind);
    this.w.trace(`VIOLATION ${kind}: ${detail}`);
    this.violations.push({ kind, at: this.w.now, detail });
  }

  has(kind: ViolationKind): boolean {
    return this.kinds.has(kind);
  }

  // ---- after every event ----

  /** The VM's writers: QEMUs that run it (or will when thawed) and may acknowledge writes. */
  writers(): SimQemu[] {
    const out: SimQemu[] = [];
    for (const h of Object.values(this.w.hosts)) if (h.qemu && this.w.qemu.writer(h.qemu)) out.push(h.qemu);
    return out;
  }

  afterEvent(): void {
    const ws = this.writers();
    if (ws.length > 1) this.violation('single-writer', `two writers: ${ws.map((q) => `${q.node} (${q.colo}, pid ${q.pid})`).join(' and ')}`);
    const wr = ws[0] ?? null;
    if (wr && wr !== this.lastWriter) this.diskHoldsAcked(wr, 'becoming the writer');
    this.lastWriter = wr;
    const now = new Set<number>();
    for (const q of ws) {
      if (!this.w.qemu.writesAlone(q)) continue;
      now.add(q.pid);
      if (!this.alone.has(q.pid)) this.beginsAlone(q);
    }
    this.alone = now;
    const running = ws.some((q) => !this.w.qemu.stopped(q));
    if (running) this.ranSinceAble = true;
    if (this.w.now >= this.w.sched.quietAt && this.runAgainAt === null && this.w.client.serving().length) this.runAgainAt = this.w.now;
  }

  /**
   * A node begins to write alone: the lease was its when it decided (when the
   * procedure that makes it write began, or now), by the witness's own grants,
   * and is nobody else's now; and a new epoch of its own is on its disk and
   * recorded as the newest.
   */
  private beginsAlone(q: SimQemu): void {
    const h = this.w.hosts[q.node];
    const wit = this.w.witness;
    // The procedure whose step made it write alone (a late command's: its agent may have given up on it, or died).
    const by = (h.effectAt === this.w.now ? h.effectOf : null) ?? h.procedure;
    if (this.w.sched.witness) {
      const decided = by?.startedAt ?? this.w.now;
      const then = wit.holderAt(decided);
      const now = wit.holderAt(this.w.now);
      if (then !== q.node || (now !== null && now !== q.node)) {
        this.violation('lease-before-writing-alone', `${q.node} begins to write alone${by ? ` (${by.kind}, begun ${Math.round(this.w.now - decided)} ms ago)` : ''}, but the witness's lease was ${then ? `${then}'s` : 'nobody\'s'} then${now !== then ? ` and is ${now ? `${now}'s` : 'nobody\'s'} now` : ''}`);
      }
    }
    // As it was when the node decided (a record lost since is another fault).
    const rec = by?.record ?? h.record;
    const own = rec.state === 'ok' && rec.epoch.by === q.node;
    const newest = rec.state === 'ok' ? wit.newest(rec.epoch.run) : undefined;
    const recorded = !this.w.sched.witness || (rec.state === 'ok' && compareEpochs(rec.epoch, newest) === 'same');
    if (!own || !recorded) {
      this.violation('epoch-before-writing-alone', `${q.node} begins to write alone with ${rec.state === 'ok' ? `epoch ${rec.epoch.gen}/${rec.epoch.by}` : `its record ${rec.state}`}${this.w.sched.witness ? `, the witness's newest ${newest ? `${newest.gen}/${newest.by}` : 'none'}` : ''}`);
    }
  }

  /** No acknowledged write is missing from the disk of the node that runs the VM. */
  diskHoldsAcked(q: SimQemu, when: string): void {
    const disk = this.w.hosts[q.node].disk;
    for (const x of this.w.acked) if (!disk.has(x)) return this.violation('acked-write-kept', `${q.node} runs the VM without acknowledged write ${x} (${when})`);
  }

  acknowledged(q: SimQemu, write: number): void {
    this.diskHoldsAcked(q, `acknowledging write ${write}`);
  }

  /** A resync of `target` from `source` is about to replace the target's disk. */
  resyncTowards(target: Host, source: NodeName): void {
    const src = this.w.hosts[source];
    for (const x of target.disk) if (this.w.acked.has(x) && !src.disk.has(x)) return this.violation('resync-direction', `resync of ${target.name} from ${source} overwrites acknowledged write ${x} that ${source} lacks`);
  }

  /** A checkpoint completed: the secondary's disk is its replica from now on ([replication]). */
  checkpointed(s: Session): void {
    const disk = this.w.hosts[s.s].disk;
    let short = false;
    for (const x of this.w.acked) if (!disk.has(x)) short = true;
    if (short) this.replicaShortSince ??= this.w.now;
    else this.replicaShortSince = null;
  }

  // ---- promptness ----

  /** A fault is about to be applied: a host loss that prompt-takeover judges begins its window. */
  faultApplied(f: Fault): void {
    if (f.kind === 'cut') return this.cutApplied(f);
    if (f.kind === 'kill-agent') return this.restartApplied(f);
    if (!HOST_LOSSES.has(f.kind) || !('node' in f) || this.hostLoss) return;
    const w = this.w;
    const primary = w.hosts[f.node];
    const secondary = w.hosts[primary.peer];
    const pc = primary.agent?.driver.core;
    const sc = secondary.agent?.driver.core;
    if (!w.sched.witness || !primary.up || primary.paused || !pc || !sc || pc.role !== 'primary' || sc.role !== 'secondary') return;
    const boundMs = promptTakeoverMs(sc.cfg);
    // Paused or powered off for less than the bound, the host may answer again before the secondary decides.
    if (faultMs(f) <= boundMs) return;
    // Only a fault alone: none other lasts into the window (othersInWindow says which soak seeds taught what).
    if (othersInWindow(w.sched.faults, f, boundMs)) return;
    // Both protected, the secondary fine: its host, its agent, its disk's record and epoch, its replica exact, and
    // the witness up and reachable.
    if (!isProtected(pc) || !isProtected(sc)) return;
    if (!secondary.up || secondary.paused || secondary.record.state !== 'ok' || sc.disk.epoch === undefined || sc.disk.missedWriteAt !== null) return;
    if (!w.witness.up || !w.net.up(witnessLink(secondary.name))) return;
    this.hostLoss = { secondary: secondary.name, at: w.now, by: w.now + boundMs, kind: f.kind };
    this.hostLossesJudged++;
  }

  /**
   * A cut of the replication link alone, both ways or one way (what the primary sends is lost, or what the secondary
   * sends), under a protected pair with a heartbeat path over it and another.
   */
  private cutApplied(f: Extract<Fault, { kind: 'cut' }>): void {
    if (f.links.length !== 1 || f.links[0] !== 'replication' || this.cut) return;
    const w = this.w;
    const primary = Object.values(w.hosts).find((h) => h.agent?.driver.core.role === 'primary');
    if (!primary) return;
    const secondary = w.hosts[primary.peer];
    const pc = primary.agent?.driver.core;
    const sc = secondary.agent?.driver.core;
    if (!pc || !sc || sc.role !== 'secondary' || pc.cfg.replicationPath === null) return;
    const boundMs = promptCutMs(pc.cfg);
    if (faultMs(f) <= boundMs || othersInWindow(w.sched.faults, f, boundMs)) return;
    if (!isProtected(pc) || !isProtected(sc)) return;
    // The primary fine: its host, its disk's record and epoch (else it fences rather than carry on), the witness.
    if (!primary.up || primary.paused || primary.record.state !== 'ok' || pc.disk.epoch === undefined) return;
    if (w.sched.witness && (!w.witness.up || !w.net.up(witnessLink(primary.name)))) return;
    // Without a witness, the secondary's disk epoch known too: else the primary may only fence (soak seed 12,840,927:
    // b's disk record lost 4 s before the cut).
    if (!w.sched.witness && (secondary.record.state !== 'ok' || sc.disk.epoch === undefined)) return;
    this.cut = { primary: primary.name, at: w.now, by: w.now + boundMs, from: f.from };
    this.cutsJudged++;
  }

  /** An agent of a protected pair killed and started again, nothing else in the window: the pair must stay one. */
  private restartApplied(f: Extract<Fault, { kind: 'kill-agent' }>): void {
    if (this.restart) return;
    const w = this.w;
    const h = w.hosts[f.node];
    const peer = w.hosts[h.peer];
    const hc = h.agent?.driver.core;
    const pc = peer.agent?.driver.core;
    if (!hc || !pc || !isProtected(hc) || !isProtected(pc)) return;
    const windowMs = f.ms + RESTART_KEPT_MS;
    if (othersInWindow(w.sched.faults, f, windowMs)) return;
    // Both hosts fine, their disks' records too (an agent that cannot read its record may rightly fence).
    if (!h.up || h.paused || !peer.up || peer.paused || h.record.state !== 'ok' || peer.record.state !== 'ok') return;
    if (w.sched.witness && !w.witness.up) return;
    // The pair recovered from any fault before: a checkpoint completed since the last one ended (soak seed 12,857,043:
    // a cut of the replication link and a's witness link ended 193 ms before the kill, with no checkpoint for 5.4 s;
    // both still said PROTECTED, inside the stall bound, and b rightly took over).
    const ended = Math.max(-Infinity, ...w.sched.faults.filter((g) => g !== f && g.at < f.at).map(lastsUntil));
    const s = w.qemu.session;
    if (!s || !w.qemu.healthy(s) || s.lastCheckpointAt < ended) return;
    this.restart = { node: f.node, at: w.now, until: w.now + windowMs };
    this.restartsJudged++;
  }

  /** An agent decided (action, with its reason): a judged takeover, or a judged cut's failover, ends its window. */
  decided(node: NodeName, action: string): void {
    const r = this.restart;
    if (r && this.w.now > r.until) this.restart = null;
    else if (r && PAIR_ENDING.has(action)) {
      this.restart = null;
      this.violation('restart-kept', `${node} decided ${action} ${Math.round(this.w.now - r.at)} ms after ${r.node}'s agent was killed to be started again, nothing else wrong (${this.w.describe()})`);
    }
    const c = this.cut;
    if (c && node === c.primary && action === 'primary-failover') {
      this.slowestCutMs = Math.max(this.slowestCutMs, this.w.now - c.at);
      this.cut = null;
    }
    const l = this.hostLoss;
    if (!l || node !== l.secondary || action !== 'takeover') return;
    this.slowestTakeoverMs = Math.max(this.slowestTakeoverMs, this.w.now - l.at);
    this.hostLoss = null;
  }

  private promptness(): void {
    const c = this.cut;
    if (c && this.w.now > c.by) {
      this.cut = null;
      this.violation('prompt-cut', `${c.primary} did not decide to carry on alone within ${Math.round(c.by - c.at)} ms of its replication link alone being cut${c.from ? ` one way (what ${c.from} sends lost)` : ''} (${this.w.describe()})`);
    }
    const l = this.hostLoss;
    if (!l || this.w.now <= l.by) return;
    this.hostLoss = null;
    this.violation('prompt-takeover', `${l.secondary} did not decide to take over within ${Math.round(l.by - l.at)} ms of its primary's host loss (${l.kind}) (${this.w.describe()})`);
  }

  // ---- at every agent tick ----

  ticked(h: Host): void {
    const core = h.agent!.driver.core;
    const s = this.w.qemu.session;
    const q = h.qemu;
    const now = this.w.now;
    if (isProtected(core)) {
      // Within the core's own bounds, plus the tick that sees it.
      const cfg = core.cfg;
      const mine = !!s && !!q && (s.pq === q || s.sq === q);
      // From its COLO_EXIT on ([late-exit]: before it, the stall is what an agent can see).
      const endBroken = !!q && q.broken && q.exitAt < now - EVENT_SEEN_MS;
      const justEnded = !q && now - h.qemuEndedAt <= EVENT_SEEN_MS;
      // An agent whose event loop was blocked (a slow disk under its synchronous record write, its host paused whole)
      // answers no status query meanwhile, and sees what it missed at its next tick after: judged from then (seeds
      // 1,001,005 and 2,039,339 of the soak).
      const justUnblocked = now - h.agent!.blockedUntil <= EVENT_SEEN_MS;
      const flowing = mine && (now - s.lastCheckpointAt <= cfg.stallMs + EVENT_SEEN_MS || (s.phase === 'sending' && now - s.phaseSince <= cfg.checkpointTimeoutMs + EVENT_SEEN_MS));
      if (!justEnded && !justUnblocked && (!flowing || endBroken)) {
        this.violation('status-truth', `${h.name}: status says PROTECTED, but ${!mine ? 'its QEMU is in no COLO session' : endBroken ? 'its COLO stream broke' : `no checkpoint for ${Math.round(now - s!.lastCheckpointAt)} ms`}`);
      }
      if (this.replicaShortSince !== null && s && !s.over && now - this.replicaShortSince > replicaReactMs(cfg.heartbeatTimeoutMs)) {
        const missing = [...this.w.acked].find((x) => !this.w.hosts[s.s].disk.has(x));
        this.violation('replica-exact', `${h.name}: status says PROTECTED, but ${s.s}'s disk lacks acknowledged write ${missing} (a replica write failed, ${Math.round(now - this.replicaShortSince)} ms ago)`);
      }
    }
    // Liveness bookkeeping: protected again = a healthy session that both agents call protected.
    if (now >= this.w.sched.quietAt) {
      const both = (['a', 'b'] as const).every((x) => this.w.hosts[x].agent && isProtected(this.w.hosts[x].agent!.driver.core));
      if (both && this.w.qemu.healthy()) {
        this.protectedSince ??= now;
        this.protectedAgainAt ??= now;
        if (now - this.protectedSince >= STABLE_MS) this.stable = true;
      } else this.protectedSince = null;
    }
  }

  /** Some node could run the VM now: why, or null. */
  private ableToRun(): string | null {
    const w = this.w;
    for (const h of Object.values(w.hosts)) {
      if (!h.up || h.paused || !h.agent || h.record.state !== 'ok') continue;
      if ([...w.acked].some((x) => !h.disk.has(x))) continue;
      if (lacksAFailedForward(w, h)) continue;
      const peer = w.hosts[h.peer];
      if (w.sched.witness) {
        const newest = w.witness.newest(h.record.epoch.run);
        if (newest && !holdsNewest(h.record, newest)) continue;
        if (!w.witness.up || !w.net.up(witnessLink(h.name))) continue;
        // A witness so slow that even its quickest grant comes when the lease has less than its stop margin left
        // grants nothing a node may write under (soak seed 12,455,694: answers 1.2-2.4 s late to requests for a
        // 500 ms lease, counted from the request): it is not reached, for the lease.
        if (h.agent && w.witness.slowMs / 2 >= usableLeaseMs(h.agent.driver.core.cfg)) continue;
        // A witness with no record of the run (it lost it) grants only on the other node's word: that node must
        // be there, know its disk and reach the witness too (node/witness-core.ts, runs not on record).
        if (!newest && !(peer.up && !peer.paused && peer.agent && peer.record.state === 'ok' && w.net.up(witnessLink(peer.name)))) continue;
      } else if (!(h.qemu?.alive && !h.qemu.incoming && h.qemu.colo !== 'secondary' && this.w.hosts[h.peer].record.state === 'ok')) {
        // Without a witness a primary carries on alone on its own authority; anything else needs the other agent's
        // word, the arbiter: it must be heard, and its disk be known and not newer (nobody vouches for a lost record).
        if (!peer.up || peer.paused || !peer.agent || ![0, 1].slice(0, w.sched.paths).some((p) => w.net.up(w.net.pathLink(p)))) continue;
        if (peer.record.state !== 'ok' || (compareEpochs(peer.record.epoch, h.record.epoch) !== 'older' && compareEpochs(peer.record.epoch, h.record.epoch) !== 'same')) continue;
      }
      return `${h.name} holds every acknowledged write and the newest epoch and reaches the ${w.sched.witness ? 'witness' : 'other agent'}`;
    }
    return null;
  }

  /** Every TICK_MS of the world (whether any agent runs or not). */
  duringFaults(): void {
    this.promptness();
    const why = this.ableToRun();
    const now = this.w.now;
    const ran = this.ranSinceAble;
    this.ranSinceAble = false;
    if (ran && this.ableSince !== null) this.longestDownWhileAbleMs = Math.max(this.longestDownWhileAbleMs, now - this.ableSince);
    if (why === null || ran) {
      this.ableSince = null;
      return;
    }
    this.ableSince ??= now;
    this.ableWhy = why;
    if (now - this.ableSince > RUN_DURING_FAULTS_MS) {
      this.violation('liveness-during-faults', `the VM has not run for ${Math.round((now - this.ableSince) / 1000)} s while ${this.ableWhy} (${this.w.describe()})`);
      this.ableSince = now;
    }
  }

  /**
   * Whether the pair can run the VM again by itself once the faults stop:
   * a node that is up holds every acknowledged write under a known epoch that
   * is the newest (or that it asked the witness to record, which did); without a witness, also both hosts are there and both
   * records known (nobody else can say that a disk is the newest). Otherwise
   * only an operator can (never an epoch guessed): say why.
   */
  private unrecoverable(): string | null {
    const w = this.w;
    const hs = Object.values(w.hosts);
    if (!w.sched.witness && hs.some((h) => h.gone)) return 'without a witness, a host gone for good leaves the VM to an operator';
    if (!w.sched.witness && hs.some((h) => h.record.state !== 'ok')) return 'without a witness, a lost disk record leaves the VM to an operator';
    const [ra, rb] = [w.hosts.a.record, w.hosts.b.record];
    // A witness that lost its record vouches for no disk, and a node that lost its own cannot say whether it is newer.
    if (w.sched.witness && hs.some((h) => h.record.state !== 'ok' || h.gone) && hs.every((h) => h.record.state !== 'ok' || !w.witness.newest(h.record.epoch.run))) {
      return 'the witness has no record of the run and a node\'s disk record is lost (or its host gone): only an operator can say which disk is the newest';
    }
    // Both began an epoch of the same generation where neither heard the other (README: only possible without a witness).
    if (ra.state === 'ok' && rb.state === 'ok' && compareEpochs(ra.epoch, rb.epoch) === 'divergent') return 'without a witness, disks whose epochs diverged leave the VM to an operator';
    const able = hs.some((h) => {
      if (h.gone || h.record.state !== 'ok' || [...w.acked].some((x) => !h.disk.has(x)) || lacksAFailedForward(w, h)) return false;
      const newest = w.sched.witness ? w.witness.newest(h.record.epoch.run) : undefined;
      return !newest || holdsNewest(h.record, newest);
    });
    return able ? null : 'no node that is left holds every acknowledged write under a known, newest epoch';
  }

  /** At the end of the run. */
  finish(end: number): void {
    const quiet = this.w.sched.quietAt;
    const gone = Object.values(this.w.hosts).some((h) => h.gone);
    const why = this.unrecoverable();
    if (why) return void this.w.trace(`liveness after the faults not judged: ${why}`);
    if (this.runAgainAt === null || this.runAgainAt - quiet > RUN_BOUND_MS) {
      return this.violation('liveness-after-faults', `the VM did not run again within ${RUN_BOUND_MS / 1000} s after the faults stopped (${this.w.describe()})`);
    }
    if (gone) return;
    if (this.protectedAgainAt === null || this.protectedAgainAt - quiet > PROTECT_BOUND_MS) {
      return this.violation('protected-after-faults', `not protected again within ${PROTECT_BOUND_MS / 1000} s after the faults stopped (${this.w.describe()})`);
    }
    if (!this.stable && this.w.now >= end) this.violation('protected-after-faults', `protection did not hold for ${STABLE_MS / 1000} s at the end (${this.w.describe()})`);
  }
}
