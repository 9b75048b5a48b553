/**
 * What a daemon sees of one VM's agent, as it runs: every step of its core
 * (the input with its time, the effects it asked for) and its QEMU's events
 * (agent.ts' AgentObserver). From them, without a say in anything:
 * - the event journal's records: every decision with its reason, each
 *   procedure's outcome with its figures, the steps of a resync, and the
 *   changes seen in the agent's status (protection, role, lease, heartbeat
 *   paths, witness, what it waits for);
 * - the metrics' counters (checkpoints and their pauses, failovers, fences,
 *   restarts, resyncs by outcome, decisions by action);
 * - the recent checkpoint pauses, for the live views.
 * Time is injected (the core's monotonic `now` for durations, the wall clock
 * for records); every history kept is bounded.
 */
import type { CoreStatus, Effect, Input } from '../node/core/types.js';
import type { AgentObserver } from '../node/agent.js';
import type { JournalDraft } from './journal.js';
import type { Figure, JournalKind, PauseStats } from './api-types.js';

/** The recent checkpoint pauses kept per VM (a few minutes of a checkpoint a second, fewer of a busy VM). */
export const PAUSES_KEPT = 600;
/** The window the pause statistics cover. */
export const PAUSE_STATS_WINDOW_MS = 60_000;
/** Records of changes seen (not decisions, not outcomes) per VM: a burst of this many, then one a second. */
const SEEN_BURST = 40;
const SEEN_REFILL_PER_S = 1;

/** Bounded reasons for the metrics' labels (the journal keeps the words). */
export const FAILOVER_REASONS = ['peer-qemu-dead', 'colo-exit', 'peer-unreachable', 'replication-stalled', 'peer-fenced', 'other'] as const;
export type FailoverReason = (typeof FAILOVER_REASONS)[number];

/** Why a failover was decided, as a label: from the core's reason (src/node/core/core.ts: primaryFailoverReason, secondaryAction). */
export function failoverReason(why: string): FailoverReason {
  if (/reports its QEMU dead/.test(why)) return 'peer-qemu-dead';
  if (/COLO_EXIT/.test(why)) return 'colo-exit';
  if (/unreachable|silent|does not answer/.test(why)) return 'peer-unreachable';
  if (/stalled/.test(why)) return 'replication-stalled';
  if (/fenced itself/.test(why)) return 'peer-fenced';
  return 'other';
}

/** Why our VM was stopped (fenced), as a label. */
export function fenceReason(why: string): string {
  if (/impossible/.test(why)) return 'failover-impossible';
  if (/witness knows a newer disk/.test(why)) return 'stale-disk';
  if (/disk \(.*\) is (newer|divergent)|disk epoch is unknown/.test(why)) return 'peer-disk-newer';
  if (/lease/.test(why)) return 'lease-lost';
  if (/runs the VM|carries on alone/.test(why)) return 'peer-runs-vm';
  if (/replication link broke/.test(why)) return 'replication-broke';
  return 'other';
}

/** Why the VM was restarted alone from our disk, as a label. */
export function restartReason(why: string): string {
  if (/silent/.test(why)) return 'peer-silent';
  if (/witness decides/.test(why)) return 'witness-decides';
  if (/is stopped/.test(why)) return 'peer-stopped';
  if (/newest/.test(why)) return 'newest-disk';
  return 'other';
}

/** The counters a VM's observations move (metrics.ts keeps them). */
export interface VmCounters {
  checkpoint(vm: string, pauseMs: number): void;
  failover(vm: string, kind: string, reason: FailoverReason, detectionMs: number | null, procedureMs: number): void;
  fence(vm: string, reason: string): void;
  restart(vm: string, reason: string): void;
  resync(vm: string, outcome: 'done' | 'failed', ms: number | null): void;
  decision(vm: string, action: string): void;
  coloExit(vm: string, reason: string): void;
  recordsDropped(vm: string, n: number): void;
  /** The time between two heartbeats heard from the peer's agent (on any path): what the heartbeat timeout must exceed. */
  heartbeatGap(vm: string, gapMs: number): void;
  /** A request to the witness (lease or query) to its answer: what the lease's stop margin must exceed. */
  witnessRoundTrip(vm: string, ms: number): void;
}

/** Witness requests remembered for their round trip (a few leases' worth of renewals). */
const WITNESS_ASKS_KEPT = 32;

export interface VmWatchOptions {
  vm: string;
  /** The agents' heartbeat timeout (the VM's, as defined now): a path not heard for this long is silent. */
  heartbeatTimeoutMs: () => number;
  /** The writer lease's length (the VM's): how often the witness is asked, for witnessReachable. */
  leaseMs: () => number;
  record: (d: JournalDraft) => void;
  counters: VmCounters;
  /** The wall clock (ms); injected for tests. */
  wallNow?: () => number;
}

/** A number rounded for a record. */
const r0 = (x: number) => Math.round(x);

function pct(offset: number, len: number): number {
  return Math.floor((100 * offset) / Math.max(1, len));
}

/** The p-th percentile (0..1) of sorted `xs`. */
function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

const pathHeard = (p: CoreStatus['peer']['paths'][number], timeoutMs: number) => p.lastHeardMs !== null && p.lastHeardMs < timeoutMs;

/**
 * Whether the witness answers this agent, with some slack: a node that holds
 * no lease asks it every 2 × leaseMs, and the core's status calls it
 * unreachable as soon as its last answer is older than that, i.e. for a
 * moment before each answer (seen in the lab: "witness unreachable for 2034
 * ms", then "answers again" 50 ms later, every 2-4 s). Counted as
 * unreachable here only past the query interval plus max(1 s, leaseMs); an
 * agent that never heard it goes by the core's word (which allows for its
 * start). Null when the VM has no witness.
 */
export function witnessReachable(a: { lease: CoreStatus['lease']; degraded: string[] }, leaseMs: number): boolean | null {
  if (!a.lease.witness) return null;
  if (a.lease.held) return true;
  if (a.lease.witnessAnswerMs === null) return !a.degraded.some((d) => d.startsWith('witness unreachable'));
  return a.lease.witnessAnswerMs <= 2 * leaseMs + Math.max(1000, leaseMs);
}

export class VmWatch implements AgentObserver {
  readonly vm: string;
  private readonly wallNow: () => number;
  /** The status seen at the last tick: what changes are measured against. */
  private seen: CoreStatus | null = null;
  /** Whether each heartbeat path was heard, as last compared (at every input: stepped). */
  private pathsHeard: boolean[] | null = null;
  /** A checkpoint began (STOP) at this core time, while the VM was in COLO. */
  private stopAt: number | null = null;
  /** Recent pauses: [wall-clock ms when the checkpoint ended, pause ms], oldest first. */
  private readonly pauseRing: Array<[number, number]> = [];
  private checkpointCount = 0;
  /** The last mirror progress recorded (in quarters), and of which resync (its start). */
  private mirrorQuarter = -1;
  /** The newest decision's reason per action (a fence's record carries the procedure's words, its decision the why). */
  private readonly decided = new Map<string, string>();
  /** The burst allowance of records of changes seen, and those left out since the last one written. */
  private tokens = SEEN_BURST;
  private tokensAt: number | null = null;
  private dropped = 0;
  /** When the peer's newest heartbeat was heard (core time), to measure the gaps between them. */
  private heardAt: number | null = null;
  /** Witness requests out: id → when asked (core time); bounded. */
  private readonly witnessAsks = new Map<string, number>();

  constructor(private readonly o: VmWatchOptions) {
    this.vm = o.vm;
    this.wallNow = o.wallNow ?? Date.now;
  }

  /** Checkpoints completed since the daemon started. */
  get checkpoints(): number {
    return this.checkpointCount;
  }

  /** The recent pauses (bounded), oldest first. */
  pauses(sinceWallMs = 0): Array<[number, number]> {
    return this.pauseRing.filter(([at]) => at > sinceWallMs);
  }

  /** The last minute's pauses, summed up. */
  pauseStats(): PauseStats {
    const from = this.wallNow() - PAUSE_STATS_WINDOW_MS;
    const xs = this.pauseRing.filter(([at]) => at >= from).map(([, ms]) => ms).sort((a, b) => a - b);
    if (xs.length === 0) return { count: 0, p50Ms: null, p99Ms: null, maxMs: null };
    return { count: xs.length, p50Ms: percentile(xs, 0.5), p99Ms: percentile(xs, 0.99), maxMs: xs[xs.length - 1]! };
  }

  /** The agent (re)started: its status is seen afresh (nothing before it is compared with what it says). */
  agentStarted(): void {
    this.seen = null;
    this.pathsHeard = null;
    this.stopAt = null;
    this.heardAt = null;
    this.witnessAsks.clear();
  }

  qemuEvent(event: string, data: Record<string, unknown> | undefined): void {
    if (event !== 'COLO_EXIT') return;
    const reason = typeof data?.reason === 'string' ? data.reason : 'unknown';
    const mode = typeof data?.mode === 'string' ? data.mode : 'unknown';
    this.o.counters.coloExit(this.vm, reason);
    this.seenRecord('qemu', `COLO ended on our QEMU (COLO_EXIT: it was the ${mode}, QEMU's reason: ${reason})`, { mode, reason });
  }

  stepped(input: Input, effects: readonly Effect[], status: () => CoreStatus): void {
    // A heartbeat path falling silent (or heard again) is what this input brought, not what a decision did: recorded
    // before the decisions it led to, whatever the input. (With the host probe answered ahead of the timeout, the
    // takeover is decided in the very tick the primary falls silent; the journal said "decision takeover" first, then
    // "silent". Compared at ticks only, it said so again when the takeover came on the probe's answer, the input just
    // after the timeout: the observe test's power loss in CI.) Compared at every tick and at every step that did
    // something (a heartbeat that changes nothing, the busiest input, reads no status); the status is read at most once.
    let read: CoreStatus | undefined;
    const st = () => (read ??= status());
    if (input.t === 'tick' || effects.length > 0) this.comparePaths(st(), input.now);
    for (const e of effects) this.effect(e, input.now);
    switch (input.t) {
      case 'peer-message':
        if (input.msg.t === 'hb') {
          if (this.heardAt !== null) this.o.counters.heartbeatGap(this.vm, Math.max(0, input.now - this.heardAt));
          this.heardAt = input.now;
        }
        return;
      case 'witness-reply': {
        const askedAt = this.witnessAsks.get(input.reply.re);
        if (askedAt !== undefined) {
          this.witnessAsks.delete(input.reply.re);
          this.o.counters.witnessRoundTrip(this.vm, Math.max(0, input.now - askedAt));
        }
        return;
      }
      case 'qemu-event':
        return this.checkpointEvent(input.event, input.now, st());
      case 'qemu-lost':
        this.stopAt = null;
        return this.seenRecord('qemu', input.processGone ? 'lost our QEMU: its process is gone' : 'lost the QMP connection to our QEMU (its process runs: attaching again)', { processGone: input.processGone });
      case 'proc-progress':
        return this.resyncProgress(input, st());
      case 'tick':
        return this.compare(st(), input.now);
      default:
        return;
    }
  }

  /** STOP then RESUME while in COLO, with no work under way: a checkpoint, and how long the VM was stopped. */
  private checkpointEvent(event: string, now: number, s: CoreStatus): void {
    if (event !== 'STOP' && event !== 'RESUME') {
      this.stopAt = null;
      if (event === 'SHUTDOWN') this.seenRecord('qemu', 'our QEMU shut down', {});
      return;
    }
    const inColo = (s.role === 'primary' || s.role === 'secondary') && s.qemu.state === 'alive' && !s.qemu.coloExited && s.work === null;
    if (event === 'STOP') {
      this.stopAt = inColo ? now : null;
      return;
    }
    const began = this.stopAt;
    this.stopAt = null;
    if (began === null || !inColo) return;
    const pauseMs = Math.max(0, now - began);
    this.checkpointCount++;
    this.pauseRing.push([this.wallNow(), Math.round(pauseMs * 100) / 100]);
    if (this.pauseRing.length > PAUSES_KEPT) this.pauseRing.splice(0, this.pauseRing.length - PAUSES_KEPT);
    this.o.counters.checkpoint(this.vm, pauseMs);
  }

  private resyncProgress(input: Extract<Input, { t: 'proc-progress' }>, s: CoreStatus): void {
    if (s.work?.kind !== 'reprotect') return;
    if (input.mirror) {
      // A record at every quarter of the mirror (the metrics have the rest).
      const q = Math.floor(pct(input.mirror.offset, input.mirror.len) / 25);
      if (q === this.mirrorQuarter) return;
      this.mirrorQuarter = q;
      return this.seenRecord('resync-step', `mirroring our disk to the new secondary: ${Math.min(100, q * 25)}% of ${(input.mirror.len / 2 ** 20).toFixed(0)} MiB`, {
        offsetBytes: input.mirror.offset,
        lenBytes: input.mirror.len,
      });
    }
    if (/^\d+ steps done$/.test(input.step)) return;
    this.seenRecord('resync-step', input.step, { runningMs: s.work.runningMs });
  }

  private effect(e: Effect, now: number): void {
    const vm = this.vm;
    switch (e.t) {
      case 'ask-witness':
      case 'query-witness':
        if (this.witnessAsks.size >= WITNESS_ASKS_KEPT) this.witnessAsks.delete(this.witnessAsks.keys().next().value!);
        this.witnessAsks.set(e.id, now);
        return;
      case 'decision':
        this.decided.set(e.action, e.why);
        this.o.counters.decision(vm, e.action);
        if (e.action === 'abort-resync') this.o.counters.resync(vm, 'failed', null);
        if (e.action === 'reprotect') this.mirrorQuarter = -1;
        return this.o.record({ vm, kind: 'decision', reason: `${e.action}: ${e.why}`, figures: { action: e.action } });
      case 'record':
        return this.outcome(e.event, e.detail);
      case 'log':
        if (e.msg.startsWith('waiting: ')) return this.seenRecord('waiting', e.msg.slice('waiting: '.length), {});
        if (e.level === 'error') return this.o.record({ vm, kind: 'error', reason: e.msg, figures: figuresOf(e.fields) });
        return;
      default:
        return;
    }
  }

  /** A procedure's outcome, with its figures. */
  private outcome(event: string, d: Record<string, string | number | boolean | null>): void {
    const vm = this.vm;
    const num = (x: unknown) => (typeof x === 'number' ? x : null);
    switch (event) {
      case 'failover': {
        const why = String(d.reason ?? '').replace(/^agent: /, '');
        const kind = String(d.procedure ?? 'failover');
        const detectionMs = num(d.sinceCheckpointMs);
        const procedureMs = num(d.ms) ?? 0;
        this.o.counters.failover(vm, kind, failoverReason(why), detectionMs, procedureMs);
        const what = kind === 'takeover' ? `took the VM over from ${d.from}` : `carries the VM on without ${d.from}`;
        return this.o.record({
          vm,
          kind: 'failover',
          reason: `${what}: ${why}`,
          figures: { from: d.from, to: d.to, procedure: kind, label: failoverReason(why), detectionMs: detectionMs === null ? null : r0(detectionMs), procedureMs: r0(procedureMs), toProcedureMs: num(d.toProcedureMs) },
        });
      }
      case 'resync':
        this.o.counters.resync(vm, 'done', num(d.ms));
        return this.o.record({ vm, kind: 'resync', reason: `protected again: ${d.to} resynced from ${d.from}`, figures: { from: d.from, to: d.to, ms: num(d.ms) } });
      case 'restart': {
        const why = String(d.reason ?? '');
        this.o.counters.restart(vm, restartReason(why));
        return this.o.record({ vm, kind: 'restart', reason: `restarted the VM alone from our disk: ${why}`, figures: { ms: num(d.ms), label: restartReason(why) } });
      }
      case 'fence': {
        const why = this.decided.get('fence') ?? String(d.reason ?? '');
        this.o.counters.fence(vm, fenceReason(why));
        return this.o.record({ vm, kind: 'fence', reason: `stopped our VM (fenced) as the ${d.from}: ${d.reason}`, figures: { from: d.from, label: fenceReason(why) } });
      }
      case 'unfence':
        return this.o.record({ vm, kind: 'unfence', reason: `our VM runs again as the ${d.to}: ${d.reason}`, figures: { to: d.to } });
      default:
        return this.o.record({ vm, kind: 'error', reason: `an outcome this daemon does not know: ${event}`, figures: figuresOf(d) });
    }
  }

  /** The changes between the status seen last and this one, each a record. */
  private compare(s: CoreStatus, now: number): void {
    const prev = this.seen;
    this.seen = s;
    this.refill(now);
    if (!prev) return;
    if (prev.role !== s.role) this.seenRecord('role', `role ${prev.role} → ${s.role}`, { from: prev.role, to: s.role });
    if (prev.protected !== s.protected) {
      if (s.protected) this.seenRecord('protection', 'protected: COLO runs and its checkpoints flow', { protected: true });
      else {
        const why = [...(s.work ? [`${s.work.kind}: ${s.work.why}`] : []), ...s.degraded];
        this.seenRecord('protection', `not protected: ${why.join('; ') || `${s.role}, no checkpoint seen yet`}`, { protected: false, role: s.role });
      }
    }
    if (s.lease.witness && prev.lease.held !== s.lease.held) {
      this.seenRecord('lease', s.lease.held ? `holds the writer lease (${s.lease.remainingMs ?? 0} ms left)` : `no longer holds the writer lease${s.lease.lastRefusal ? ` (last refusal: ${s.lease.lastRefusal})` : ''}`, {
        held: s.lease.held,
        remainingMs: s.lease.remainingMs,
      });
    }
    const w0 = witnessReachable(prev, this.o.leaseMs());
    const w1 = witnessReachable(s, this.o.leaseMs());
    if (w0 !== null && w1 !== null && w0 !== w1) {
      this.seenRecord('witness', w1 ? 'the witness answers again' : `the witness does not answer (its last answer ${s.lease.witnessAnswerMs === null ? 'never came' : `${s.lease.witnessAnswerMs} ms ago`})`, { reachable: w1, lastAnswerMs: s.lease.witnessAnswerMs });
    }
  }

  /** The heartbeat paths that fell silent or were heard again since the status last seen (compare sees the rest). */
  private comparePaths(s: CoreStatus, now: number): void {
    const timeoutMs = this.o.heartbeatTimeoutMs();
    const heard = s.peer.paths.map((p) => pathHeard(p, timeoutMs));
    // Compared from the first tick's status on, as the rest of the status (compare): a path first heard after the
    // agent started is no news.
    const prev = this.seen ? this.pathsHeard : null;
    this.pathsHeard = heard;
    if (!prev) return;
    this.refill(now);
    heard.forEach((is, i) => {
      const was = prev[i];
      if (was === undefined || was === is) return;
      const p = s.peer.paths[i]!;
      this.seenRecord('heartbeat', is ? `heartbeat path ${i + 1} from ${s.peer.name}: heard again` : `heartbeat path ${i + 1} from ${s.peer.name}: silent (last heard ${p.lastHeardMs === null ? 'never' : `${p.lastHeardMs} ms ago`})`, {
        path: i + 1,
        peer: s.peer.name,
        heard: is,
        lastHeardMs: p.lastHeardMs,
      });
    });
  }

  /** A record of a change seen, within the burst allowance (decisions and outcomes are never left out). */
  private seenRecord(kind: JournalKind, reason: string, figures: Record<string, Figure | undefined>): void {
    if (this.tokens < 1) {
      this.dropped++;
      this.o.counters.recordsDropped(this.vm, 1);
      return;
    }
    this.tokens--;
    if (this.dropped > 0) {
      this.o.record({ vm: this.vm, kind: 'error', reason: `${this.dropped} records of changes seen were left out (more than ${SEEN_BURST} in a burst)`, figures: { dropped: this.dropped } });
      this.dropped = 0;
    }
    this.o.record({ vm: this.vm, kind, reason, figures });
  }

  private refill(now: number): void {
    if (this.tokensAt !== null) this.tokens = Math.min(SEEN_BURST, this.tokens + ((now - this.tokensAt) / 1000) * SEEN_REFILL_PER_S);
    this.tokensAt = now;
  }
}

/** A log line's fields as a record's figures: numbers, words and flags only. */
function figuresOf(f: Record<string, unknown> | undefined): Record<string, Figure> {
  const out: Record<string, Figure> = {};
  for (const [k, v] of Object.entries(f ?? {})) if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean' || v === null) out[k] = v;
  return out;
}
