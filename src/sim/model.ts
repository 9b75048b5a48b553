/**
 * The simulated world: two hosts, each with an agent (the real agent core),
 * a modelled QEMU and a disk; a witness (the real witness core); the cables
 * between them; a client writing to the VM. Everything happens through one
 * event queue, in virtual time, driven by one seed.
 *
 * What the model makes QEMU do is what the real-VM tests observed or QEMU's
 * source says; each behaviour names its source:
 * - [notes4]  ../shared notes on QEMU 7.2 COLO, step 4: the secondary reports
 *             COLO_EXIT ~15 ms after its primary is killed (a reset on the
 *             stream), before any QMP command; its guest keeps running.
 * - [colo.c]  migration/colo.c, colo_do_checkpoint_transaction: the primary
 *             asks (CHECKPOINT_REQUEST) and waits for the reply *before* it
 *             stops the VM: on a silent link it waits for ever with the VM
 *             running; then it stops the VM (STOP), sends RAM holding the big
 *             lock (patch 0001), waits for VMSTATE_LOADED and starts the VM
 *             again (vm_start, RESUME) whatever stopped it before.
 * - [colo.c2] colo_process_checkpoint, out: on an error COLO_EXIT(error) is
 *             sent and the thread waits for a failover; no more checkpoints.
 * - [quorum]  block/quorum.c with vote-threshold=1: a write completes once
 *             every child answered, succeeding if one did: a dead NBD child
 *             (reset) fails fast and the write lands locally; a silent one
 *             blocks the write.
 * - [compare] net/colo-compare.c: a primary packet leaves only when the
 *             secondary sent the same, or after a checkpoint: with the stream
 *             stalled or broken, answers are held until COLO ends.
 * - [agents]  test/integration/agent-failover.test.ts: kill -9 of a QEMU on a
 *             live host resets its connections; a host that loses power or a
 *             pulled cable does not (partition-hosts.test.ts: the takeover is
 *             driven by the stall, 4.6-5.6 s after the cut).
 * - [resync]  test/integration/resync.test.ts: a cut cable stalls a mirror,
 *             given up after 10 s; the VM is stopped ~0.8 s for the switch.
 * - [freeze]  SIGSTOP stops every thread, the monitor's too: neither in-band
 *             nor out-of-band commands are answered; the kernel still accepts
 *             TCP connections to its listening sockets (the NBD probe says alive).
 */
import { EventQueue } from './queue.js';
import { Rng } from './rng.js';
import { initCore, step, statusOf, isProtected, InvariantError } from '../node/core/core.js';
import type { CoreConfig, CoreState, Effect, Input, InputBody, Procedure, QemuFound } from '../node/core/types.js';
import { initWitness, witnessStep, type WitnessState } from '../node/witness-core.js';
import type { Arbiter } from '../node/arbiter.js';
import { heartbeatSchema, peerMessageSchema, witnessRequestSchema } from '../node/wire.js';
import type { Epoch } from '../pair/epoch.js';

export type NodeName = 'a' | 'b';
export type LinkName = 'heartbeat' | 'replication' | 'witness-a' | 'witness-b' | 'lan-a' | 'lan-b';
export const LINKS: LinkName[] = ['heartbeat', 'replication', 'witness-a', 'witness-b', 'lan-a', 'lan-b'];

export type Fault =
  | { at: number; kind: 'kill-qemu'; node: NodeName }
  | { at: number; kind: 'freeze-qemu'; node: NodeName; ms: number }
  | { at: number; kind: 'kill-agent'; node: NodeName; ms: number }
  | { at: number; kind: 'power-loss'; node: NodeName; ms: number }
  | { at: number; kind: 'reboot'; node: NodeName; ms: number }
  | { at: number; kind: 'cut'; links: LinkName[]; ms: number }
  | { at: number; kind: 'garbage'; link: LinkName }
  | { at: number; kind: 'slow-link'; link: LinkName; ms: number; delayMs: number }
  | { at: number; kind: 'witness-down'; ms: number }
  | { at: number; kind: 'witness-restart' }
  | { at: number; kind: 'witness-slow'; ms: number; delayMs: number }
  /** The witness records, but its answers get lost (it crashes between its write and its reply, a link that drops). */
  | { at: number; kind: 'witness-lossy'; ms: number }
  /** The replication connections are reset (a firewall, a restarted switch): both ends see COLO_EXIT. */
  | { at: number; kind: 'reset-replication' };

export interface SimOptions {
  seed: number;
  witness: boolean;
  paths: 1 | 2;
  faults: Fault[];
  /** When the last fault is over (everything healed). */
  quietAt: number;
  /** Probability that a procedure step fails (before or after taking effect). */
  stepFailP: number;
  /** Checkpoints that hold the big lock for seconds (large RAM, slow link). */
  slowCheckpoints: boolean;
  /** An operator's `lockstep resync NAME` reaching a node's agent at these times (it counts only where the VM runs alone). */
  operatorResyncs?: Array<{ at: number; node: NodeName }>;
  /** Keep every trace line (for replaying one seed), else only the last ones. */
  traceAll?: boolean;
}

export interface SimResult {
  seed: number;
  violations: string[];
  /** ms after the faults stopped until the VM ran again, and until it was protected again (null: never). */
  runAgainMs: number | null;
  protectedAgainMs: number | null;
  endedAt: number;
  acked: number;
  steps: number;
  trace: string[];
}

/** How long after the faults stop the VM must run again, and be protected again. */
export const RUN_BOUND_MS = 45_000;
export const PROTECT_BOUND_MS = 90_000;
/** And stay protected this long, at the end. */
const STABLE_MS = 10_000;

const TICK_MS = 50;
const CHECKPOINT_DELAY_MS = 2000;
const STEP_TIMEOUT_MS = 5000;

export function simCoreConfig(name: NodeName, o: SimOptions): CoreConfig {
  const heartbeatTimeoutMs = 500;
  return {
    name,
    peer: name === 'a' ? 'b' : 'a',
    paths: o.paths,
    heartbeatIntervalMs: 100,
    heartbeatTimeoutMs,
    witness: o.witness,
    leaseMs: 1000,
    reprotect: true,
    stallMs: 2 * CHECKPOINT_DELAY_MS + heartbeatTimeoutMs + 1000,
    checkpointTimeoutMs: 12_500,
    hungMs: 3000,
    joinTimeoutMs: 60_000,
    diskSizeBytes: 64 * 2 ** 20,
  };
}

interface Qemu {
  pid: number;
  node: NodeName;
  alive: boolean;
  mode: 'colo-primary' | 'colo-secondary' | 'incoming' | 'none';
  paused: boolean;
  frozen: boolean;
  /** Its COLO thread ended (COLO_EXIT sent), and when. */
  broken: boolean;
  brokenAt: number;
  /** Its main loop holds the big lock until then (Infinity: stuck on a silent link). */
  bqlUntil: number;
  nbd: boolean;
  /** It has the secondary's redirectors (from its start as a secondary until Secondary Failover deletes them). */
  secFilters: boolean;
  /** Procedure steps whose effect is in place (what a check of QEMU's state would find). */
  applied: Set<string>;
  queries: Array<{ id: string; oob: boolean; boot: string }>;
}

interface Agent {
  boot: string;
  core: CoreState;
  attached: number | null;
  /** The simulated witness, through the interface the real agent uses (arbiter.ts). */
  arbiter: Arbiter;
}

/** The VM's lease at the simulated witness. */
const SIM_LEASE = 'vm';

interface HostNode {
  name: NodeName;
  peer: NodeName;
  hostUp: boolean;
  agent: Agent | null;
  qemu: Qemu | null;
  /** A new secondary being prepared for the peer's resync (not ours until adopted). */
  prepared: Qemu | null;
  /** The data this node would run the VM from. */
  disk: Set<number>;
  /** generation.json: durable. */
  record: { epoch: Epoch | undefined; pending: Epoch | undefined };
  tapOn: boolean;
  /** When its QEMU last ended (its agent hears of it a moment later). */
  qemuEndedAt: number;
}

interface Link {
  cut: boolean;
  cutAt: number;
  delayMs: number;
  /** Bumped when connections over it are reset (messages in flight are lost). */
  epoch: number;
  /** Messages sent while cut: delivered at the heal if their connection survives it. */
  held: Array<() => void>;
}

interface Session {
  id: number;
  p: NodeName;
  s: NodeName;
  pq: Qemu;
  sq: Qemu;
  phase: 'idle' | 'await-reply' | 'sending';
  phaseSince: number;
  lastCheckpointAt: number;
  startedAt: number;
  /** The stream broke (an end gone or yanked): no more checkpoints. */
  over: boolean;
  overAt: number;
}

interface Request {
  id: number;
  startedAt: number;
  /** The write (id) the serving VM applied, and where. */
  write: number | null;
  on: Qemu | null;
  /** Waiting for: the disk write (stalled replication) or the answer (held by colo-compare). */
  state: 'routing' | 'blocked' | 'held' | 'answering';
}

export class World {
  readonly q = new EventQueue();
  readonly rng: Rng;
  now = 0;
  private nextPid = 100;
  private nextWrite = 1;
  private nextSession = 1;
  readonly nodes: Record<NodeName, HostNode>;
  readonly links: Record<LinkName, Link>;
  witness: { up: boolean; state: WitnessState; slowMs: number; lossy: boolean; incarnation: number; persisted: Record<string, Epoch> };
  session: Session | null = null;
  private request: Request | null = null;
  readonly acked = new Set<number>();
  readonly violations: string[] = [];
  private readonly traceLines: string[] = [];
  private steps = 0;
  private runAgainAt: number | null = null;
  private protectedSince: number | null = null;
  private protectedAgainAt: number | null = null;
  private done = false;
  private lastOrder = new Map<string, number>();

  constructor(readonly o: SimOptions) {
    this.rng = new Rng(o.seed);
    const run = `run-${this.rng.hex(8)}`;
    const epoch: Epoch = { run, gen: 1, by: 'up' };
    const mk = (name: NodeName): HostNode => ({
      name,
      peer: name === 'a' ? 'b' : 'a',
      hostUp: true,
      agent: null,
      qemu: null,
      prepared: null,
      disk: new Set(),
      record: { epoch, pending: undefined },
      tapOn: name === 'a',
      qemuEndedAt: -1e9,
    });
    this.nodes = { a: mk('a'), b: mk('b') };
    this.links = Object.fromEntries(LINKS.map((l) => [l, { cut: false, cutAt: 0, delayMs: 0, epoch: 0, held: [] }])) as unknown as Record<LinkName, Link>;
    this.witness = { up: o.witness, state: initWitness(0, 0), slowMs: 0, lossy: false, incarnation: 1, persisted: {} };
    // `up`: both QEMUs in COLO, a primary, b secondary.
    const pq = this.newQemu('a', 'colo-primary');
    const sq = this.newQemu('b', 'colo-secondary');
    pq.paused = false;
    sq.paused = false;
    this.nodes.a.qemu = pq;
    this.nodes.b.qemu = sq;
    this.startSession('a', 'b', pq, sq);
    for (const n of ['a', 'b'] as const) this.startAgent(n);
    for (const f of o.faults) this.at(f.at, () => this.fault(f));
    for (const r of o.operatorResyncs ?? []) {
      this.at(r.at, () => {
        if (!this.nodes[r.node].agent) return;
        this.trace(`operator: lockstep resync, to ${r.node}'s agent`);
        this.input(r.node, { t: 'operator-resync' });
      });
    }
    this.at(0, () => this.clientTick());
  }

  // ---- running ----

  run(): SimResult {
    const end = this.o.quietAt + PROTECT_BOUND_MS + STABLE_MS;
    while (!this.done) {
      const e = this.q.pop();
      if (!e || e.at > end) break;
      this.now = e.at;
      e.fn();
      this.checkWriters();
      if (this.violations.length) break;
    }
    if (!this.violations.length) this.checkLiveness(end);
    return {
      seed: this.o.seed,
      violations: this.violations,
      runAgainMs: this.runAgainAt === null ? null : this.runAgainAt - this.o.quietAt,
      protectedAgainMs: this.protectedAgainAt === null ? null : this.protectedAgainAt - this.o.quietAt,
      endedAt: this.now,
      acked: this.acked.size,
      steps: this.steps,
      trace: this.traceLines,
    };
  }

  private at(t: number, fn: () => void): void {
    this.q.push(Math.max(t, this.now), fn);
  }

  private after(ms: number, fn: () => void): void {
    this.q.push(this.now + ms, fn);
  }

  trace(line: string): void {
    this.traceLines.push(`${(this.now / 1000).toFixed(3).padStart(8)} ${line}`);
    if (!this.o.traceAll && this.traceLines.length > 400) this.traceLines.splice(0, this.traceLines.length - 300);
  }

  /** Injected failures (QMP steps, disk writes) are faults too: they stop with the others. */
  private faultsOn(): boolean {
    return this.now < this.o.quietAt;
  }

  private violation(what: string): void {
    this.trace(`VIOLATION: ${what}`);
    this.violations.push(`${(this.now / 1000).toFixed(3)} s: ${what}`);
  }

  // ---- QEMU ----

  private newQemu(node: NodeName, mode: Qemu['mode']): Qemu {
    return { pid: this.nextPid++, node, alive: true, mode, paused: true, frozen: false, broken: false, brokenAt: 0, bqlUntil: 0, secFilters: mode === 'colo-secondary' || mode === 'incoming', nbd: mode === 'colo-secondary' || mode === 'incoming', applied: new Set(), queries: [] };
  }

  private responsive(q: Qemu, oob: boolean): boolean {
    return q.alive && !q.frozen && (oob || q.bqlUntil <= this.now);
  }

  /** Answers the watchdog's queries that QEMU can answer now. */
  private answerQueries(q: Qemu): void {
    const n = this.nodes[q.node];
    for (const x of [...q.queries]) {
      if (!this.responsive(q, x.oob)) continue;
      q.queries.splice(q.queries.indexOf(x), 1);
      this.after(this.rng.range(0.5, 3), () => {
        if (n.agent?.boot === x.boot && n.agent.attached === q.pid && q.alive) this.input(n.name, { t: 'qemu-answer', id: x.id });
      });
    }
  }

  private qmpEvent(q: Qemu, event: 'STOP' | 'RESUME' | 'COLO_EXIT'): void {
    const n = this.nodes[q.node];
    const boot = n.agent?.boot;
    this.after(this.rng.range(0.2, 2), () => {
      if (n.agent && n.agent.boot === boot && n.agent.attached === q.pid && q.alive) this.input(n.name, { t: 'qemu-event', event });
    });
  }

  /** The process ends. `reset`: its host is up and resets its connections (kill -9); not after a power loss. */
  private endQemu(q: Qemu, reset: boolean, why: string): void {
    if (!q.alive) return;
    this.trace(`${q.node}: QEMU ${q.pid} ends (${why})`);
    q.alive = false;
    q.queries = [];
    const n = this.nodes[q.node];
    if (n.qemu === q) {
      n.qemu = null;
      n.qemuEndedAt = this.now;
    }
    if (n.prepared === q) n.prepared = null;
    if (n.agent && n.agent.attached === q.pid) {
      n.agent.attached = null;
      const boot = n.agent.boot;
      this.after(1, () => {
        if (n.agent?.boot === boot) this.input(n.name, { t: 'qemu-lost', processGone: true });
      });
    }
    if (this.request?.on === q) this.requestLost();
    const s = this.session;
    if (s && !s.over && (s.pq === q || s.sq === q)) this.sessionEndGone(s, q, reset);
  }

  // ---- the COLO session ----

  private startSession(p: NodeName, s: NodeName, pq: Qemu, sq: Qemu): void {
    const sess: Session = { id: this.nextSession++, p, s, pq, sq, phase: 'idle', phaseSince: this.now, lastCheckpointAt: this.now, startedAt: this.now, over: false, overAt: 0 };
    this.session = sess;
    pq.mode = 'colo-primary';
    sq.mode = 'colo-secondary';
    pq.broken = false;
    sq.broken = false;
    this.trace(`COLO session ${sess.id}: primary ${p} (${pq.pid}), secondary ${s} (${sq.pid})`);
    this.scheduleCheckpoint(sess);
  }

  private scheduleCheckpoint(s: Session): void {
    // The periodic timer, or sooner when outputs differ (x-checkpoint-delay; colo-compare's miscompare).
    this.after(this.rng.chance(0.5) ? CHECKPOINT_DELAY_MS : this.rng.range(100, CHECKPOINT_DELAY_MS), () => this.checkpoint(s));
  }

  /** healthy: both ends in COLO and the stream not broken. */
  private sessionHealthy(s: Session | null = this.session): s is Session {
    return !!s && !s.over && s.pq.alive && s.sq.alive && !s.pq.broken && !s.sq.broken;
  }

  private checkpoint(s: Session): void {
    if (this.session !== s || s.over || s.phase !== 'idle') return;
    if (s.pq.frozen) return void this.after(100, () => this.checkpoint(s));
    // [colo.c] CHECKPOINT_REQUEST, then wait for the reply with the VM running.
    s.phase = 'await-reply';
    s.phaseSince = this.now;
    this.tryReply(s);
  }

  /** The secondary answers the checkpoint request, if the link and the secondary let it. */
  private tryReply(s: Session): void {
    if (this.session !== s || s.over || s.phase !== 'await-reply') return;
    if (this.links.replication.cut || s.sq.frozen || !s.sq.alive) return; // resumed by heal / thaw (a dead end is handled by sessionEndGone)
    this.after(this.rng.range(0.5, 3), () => {
      if (this.session !== s || s.over || s.phase !== 'await-reply' || this.links.replication.cut || s.sq.frozen) return;
      // [colo.c] stop the VM, send RAM holding the big lock (patch 0001).
      s.phase = 'sending';
      s.phaseSince = this.now;
      const slow = this.o.slowCheckpoints && this.rng.chance(0.15);
      const d = slow ? this.rng.range(1000, 9000) : this.rng.range(15, 120);
      s.pq.bqlUntil = this.now + d;
      this.qmpEvent(s.pq, 'STOP');
      this.qmpEvent(s.sq, 'STOP');
      this.after(d, () => this.finishCheckpoint(s));
    });
  }

  private finishCheckpoint(s: Session): void {
    if (this.session !== s || s.over || s.phase !== 'sending') return;
    if (this.links.replication.cut || s.sq.frozen) {
      // A silent link mid-transfer: the send blocks holding the big lock, until the link returns or a yank.
      s.pq.bqlUntil = Infinity;
      return;
    }
    s.pq.bqlUntil = this.now;
    this.answerQueries(s.pq);
    // [colo.c] vm_start whatever stopped it: a primary merely paused (not yanked) runs again.
    s.pq.paused = false;
    s.sq.paused = false;
    s.phase = 'idle';
    s.lastCheckpointAt = this.now;
    this.qmpEvent(s.pq, 'RESUME');
    this.qmpEvent(s.sq, 'RESUME');
    // Held answers leave: the secondary's state now matches.
    if (this.request && this.request.on === s.pq && this.request.state === 'held') this.answer(this.request);
    this.scheduleCheckpoint(s);
  }

  /** The link came back or the secondary thawed: a stalled checkpoint goes on after TCP's retransmission delay. */
  private resumeStalled(s: Session, stalledMs: number): void {
    const d = this.rng.range(200, Math.max(300, Math.min(20_000, stalledMs)));
    this.after(d, () => {
      if (this.session !== s || s.over) return;
      if (s.phase === 'await-reply') this.tryReply(s);
      else if (s.phase === 'sending' && s.pq.bqlUntil === Infinity) this.finishCheckpoint(s);
    });
  }

  /** One end of the stream broke by itself (yank, failover) or errored: COLO_EXIT there. */
  private breakEnd(s: Session, q: Qemu, why: string): void {
    // A reset or close that belongs to an earlier session's connection does not touch a later one.
    if (q.broken || !q.alive || this.session !== s) return;
    q.broken = true;
    q.brokenAt = this.now;
    this.trace(`${q.node}: COLO_EXIT (${why})`);
    if (q === s.pq) {
      q.bqlUntil = Math.min(q.bqlUntil, this.now);
      this.answerQueries(q);
      // [quorum] the NBD child is gone: a blocked write lands locally; its answer stays held [compare].
      if (this.request?.on === q && this.request.state === 'blocked') {
        this.request.write = this.applyWrite(q, false);
        this.request.state = 'held';
      }
    }
    this.qmpEvent(q, 'COLO_EXIT');
    this.endSession(s, `${q.node}'s end broke`);
    // The other end hears of it now (link up) or when the link returns.
    const other = q === s.pq ? s.sq : s.pq;
    this.notifyOtherEnd(s, other, `the ${q === s.pq ? 'primary' : 'secondary'} closed the stream`);
  }

  private notifyOtherEnd(s: Session, other: Qemu, why: string): void {
    if (!other.alive || other.broken) return;
    if (!this.links.replication.cut) {
      // [notes4] ~15 ms.
      this.after(this.rng.range(10, 25), () => {
        if (!this.links.replication.cut) this.breakEnd(s, other, why);
        else this.pendingResets.push({ s, q: other, why });
      });
    } else this.pendingResets.push({ s, q: other, why });
  }

  /** Ends whose peer is gone, who will learn it by a reset once the link is back. */
  private pendingResets: Array<{ s: Session; q: Qemu; why: string }> = [];

  private sessionEndGone(s: Session, q: Qemu, reset: boolean): void {
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
    s.overAt = this.now;
    this.trace(`COLO session ${s.id} over (${why})`);
  }

  /** Ends whose peer vanished without a reset: they learn it only when the peer's host answers again. */
  private silentEnds: Array<{ s: Session; q: Qemu; host: NodeName }> = [];

  // ---- agents ----

  private startAgent(name: NodeName): void {
    const n = this.nodes[name];
    const boot = this.rng.hex(16);
    const core = initCore(simCoreConfig(name, this.o), this.now, boot, { epoch: n.record.epoch, pending: n.record.pending });
    const agent: Agent = { boot, core, attached: null, arbiter: undefined as unknown as Arbiter };
    agent.arbiter = {
      acquire: (id, ttlMs, disk, next) => this.toWitness(n, agent, witnessRequestSchema.parse({ t: 'acquire', id, lease: SIM_LEASE, ttlMs, disk, next })),
      release: (id) => this.toWitness(n, agent, { t: 'release', id, lease: SIM_LEASE }),
      query: (id, run) => this.toWitness(n, agent, { t: 'query', id, lease: SIM_LEASE, run }),
      close: () => {},
    };
    n.agent = agent;
    this.trace(`${name}: agent starts (${boot.slice(0, 8)})`);
    // Attaching needs QMP answered (its main loop): tried again until it answers, or the core ends it (attachBoundMs).
    const attach = () => {
      if (n.agent?.boot !== boot) return;
      const q = n.qemu;
      if (q?.alive && !this.responsive(q, false)) return void this.after(200, attach);
      if (q?.alive) n.agent.attached = q.pid;
      this.input(name, { t: 'qemu-found', found: this.foundOf(q?.alive ? q : null) });
    };
    this.after(this.rng.range(20, 300), attach);
    const tick = () => {
      if (n.agent?.boot !== boot) return;
      this.input(name, { t: 'tick' });
      this.after(TICK_MS + this.rng.range(0, 3), tick);
    };
    this.after(this.rng.range(0, TICK_MS), tick);
  }

  private foundOf(q: Qemu | null): QemuFound {
    if (!q?.alive) return { running: false, colo: 'none', runState: 'other', replicationChild: false, secondaryFilters: false, resumeLeftovers: false, oob: true };
    // query-colo-status says primary/secondary until the failover procedure ran, even after COLO_EXIT ([colo.c2]).
    const failedOver = q.applied.has('lost-heartbeat');
    const colo = failedOver ? 'none' : q.mode === 'colo-primary' ? 'primary' : q.mode === 'colo-secondary' ? 'secondary' : 'none';
    return {
      running: true,
      colo,
      runState: q.mode === 'incoming' ? 'inmigrate' : q.paused ? 'paused' : 'running',
      replicationChild: q.mode === 'colo-primary' && !q.applied.has('remove-replication-child'),
      secondaryFilters: q.secFilters,
      resumeLeftovers: q.applied.has('resume-started') && !q.applied.has('resume-done'),
      oob: true,
    };
  }

  private killAgent(name: NodeName, why: string): void {
    const n = this.nodes[name];
    if (!n.agent) return;
    this.trace(`${name}: agent dies (${why})`);
    n.agent = null;
  }

  /** Feeds one input to a node's agent core and carries out its effects. */
  input(name: NodeName, input: InputBody): void {
    const n = this.nodes[name];
    const ag = n.agent;
    if (!ag) return;
    let next: { state: CoreState; effects: Effect[] };
    try {
      next = step(ag.core, { ...input, now: this.now } as Input);
    } catch (err) {
      if (err instanceof InvariantError) return this.violation(`${name}: ${err.message}`);
      throw err;
    }
    this.steps++;
    ag.core = next.state;
    for (const e of next.effects) this.effect(n, ag, e);
    if (input.t === 'tick') this.checkStatus(n);
  }

  private effect(n: HostNode, ag: Agent, e: Effect): void {
    switch (e.t) {
      case 'send-peer':
        return this.sendPeer(n, ag, e.path, e.msg);
      case 'ask-witness':
        return ag.arbiter.acquire(e.id, e.ttlMs, e.disk, e.next);
      case 'release-lease':
        return ag.arbiter.release(e.id);
      case 'query-witness':
        return ag.arbiter.query(e.id, e.run);
      case 'run':
        return this.runProcedure(n, ag, e.id, e.procedure, e.fromStep);
      case 'query-qemu': {
        const q = n.qemu;
        if (!q?.alive || ag.attached !== q.pid) return;
        q.queries.push({ id: e.id, oob: e.oob, boot: ag.boot });
        this.answerQueries(q);
        return;
      }
      case 'kill-qemu': {
        // By its pid, attached or not (agent.ts: the pid in the pair's record).
        const q = n.qemu;
        if (q?.alive) this.endQemu(q, true, `killed by its agent: ${e.why}`);
        return;
      }
      case 'persist-disk': {
        const boot = ag.boot;
        this.after(this.rng.range(1, 8), () => {
          // Written only if the host still runs (a power loss in between loses it).
          if (!n.hostUp || n.agent?.boot !== boot) return;
          if (this.faultsOn() && this.rng.chance(this.o.stepFailP / 4)) return this.input(n.name, { t: 'disk-persisted', id: e.id, ok: false, error: 'injected write error' });
          n.record = { epoch: e.epoch, pending: e.pending };
          this.input(n.name, { t: 'disk-persisted', id: e.id, ok: true });
        });
        return;
      }
      case 'probe-peer-qemu': {
        const peer = this.nodes[n.peer];
        const pq = peer.qemu;
        // [freeze] a frozen QEMU's kernel still accepts the connection.
        const alive = peer.hostUp && !this.links.replication.cut && !!pq?.alive && pq.nbd;
        const boot = ag.boot;
        this.after(alive ? this.rng.range(0.5, 3) : 300, () => {
          if (n.agent?.boot === boot) this.input(n.name, { t: 'probe-result', id: e.id, alive });
        });
        return;
      }
      case 'decision':
        this.trace(`${n.name}: DECIDE ${e.action}: ${e.why}`);
        return;
      case 'record':
        this.trace(`${n.name}: record ${e.event} ${JSON.stringify(e.detail)}`);
        return;
      case 'log':
        if (e.level !== 'info' || e.msg.startsWith('waiting')) this.trace(`${n.name}: ${e.level}: ${e.msg}`);
        return;
    }
  }

  // ---- network ----

  private pathLink(path: number): LinkName {
    return path === 0 ? 'heartbeat' : 'replication';
  }

  /** Sends over a link, in order per link and direction; lost if the receiving end is gone at arrival. */
  private transmit(link: LinkName, dir: string, deliver: () => void): void {
    const l = this.links[link];
    const epoch = l.epoch;
    const go = () => {
      const key = `${link}:${dir}`;
      const t = Math.max(this.now + this.rng.range(0.1, 1.5) + l.delayMs, this.lastOrder.get(key) ?? 0);
      this.lastOrder.set(key, t);
      this.at(t, () => {
        if (this.links[link].epoch === epoch) deliver();
      });
    };
    if (l.cut) l.held.push(go);
    else go();
  }

  private sendPeer(n: HostNode, ag: Agent, path: number | 'all' | 'any', msg: Extract<Effect, { t: 'send-peer' }>['msg']): void {
    // What the link would refuse, the model refuses too: the core only says what the wire carries.
    peerMessageSchema.parse(msg);
    const paths = path === 'all' ? [...Array(this.o.paths).keys()] : path === 'any' ? [this.firstOpenPath()] : [path];
    const peer = this.nodes[n.peer];
    const toBoot = peer.agent?.boot;
    for (const p of paths) {
      if (p === undefined || p >= this.o.paths) continue;
      if (!n.hostUp || !peer.hostUp || !toBoot) continue;
      this.transmit(this.pathLink(p), `${n.name}>${peer.name}`, () => {
        if (peer.agent?.boot === toBoot && n.agent?.boot === ag.boot && peer.hostUp) this.input(peer.name, { t: 'peer-message', path: p, msg });
      });
    }
  }

  private firstOpenPath(): number {
    for (let p = 0; p < this.o.paths; p++) if (!this.links[this.pathLink(p)].cut) return p;
    return 0;
  }

  private toWitness(n: HostNode, ag: Agent, req: Parameters<typeof witnessStep>[3]): void {
    if (!this.o.witness || !n.hostUp) return;
    const link: LinkName = n.name === 'a' ? 'witness-a' : 'witness-b';
    const inc = this.witness.incarnation;
    this.transmit(link, `${n.name}>w`, () => {
      const w = this.witness;
      if (!w.up || w.incarnation !== inc) return;
      // One link is served in order.
      const key = `witness<${n.name}`;
      const t = Math.max(this.now + (w.slowMs ? this.rng.range(w.slowMs / 2, w.slowMs) : this.rng.range(0.2, 2)), this.lastOrder.get(key) ?? 0);
      this.lastOrder.set(key, t);
      this.at(t, () => {
        if (!w.up || w.incarnation !== inc) return;
        const r = witnessStep(w.state, this.now, n.name, req);
        w.state = r.state;
        if (r.persist) w.persisted = { ...r.state.newest };
        if (r.log) this.trace(`witness: ${r.log}`);
        if (w.lossy && this.rng.chance(0.5)) return this.trace(`witness: answer to ${n.name} lost`);
        this.transmit(link, `w>${n.name}`, () => {
          if (n.agent?.boot === ag.boot) this.input(n.name, { t: 'witness-reply', reply: r.reply });
        });
      });
    });
  }

  private cut(link: LinkName): void {
    const l = this.links[link];
    if (l.cut) return;
    l.cut = true;
    l.cutAt = this.now;
  }

  private heal(link: LinkName): void {
    const l = this.links[link];
    if (!l.cut) return;
    l.cut = false;
    const cutMs = this.now - l.cutAt;
    // TCP retransmits what was sent meanwhile, unless the connection gave up (long cuts).
    const held = l.held.splice(0);
    if (this.rng.chance(cutMs > 15_000 ? 0.3 : 0.8)) for (const go of held) go();
    else l.epoch++;
    if (link === 'replication') {
      const s = this.session;
      if (s && !s.over) this.resumeStalled(s, cutMs);
      const resets = this.pendingResets.splice(0);
      for (const r of resets) this.after(this.rng.range(200, Math.max(300, Math.min(20_000, cutMs))), () => this.breakEnd(r.s, r.q, r.why));
      this.deliverSilentResets();
    }
  }

  /** An end whose peer vanished learns it by a reset once the peer's host is up and the link is back. */
  private deliverSilentResets(): void {
    for (const x of [...this.silentEnds]) {
      if (this.nodes[x.host].hostUp && !this.links.replication.cut) {
        this.silentEnds.splice(this.silentEnds.indexOf(x), 1);
        this.after(this.rng.range(200, 5000), () => {
          if (!this.links.replication.cut) this.breakEnd(x.s, x.q, 'reset by the peer\'s host');
          else this.silentEnds.push(x);
        });
      }
    }
  }

  // ---- procedures (the runtime's QMP steps, modelled) ----

  private runProcedure(n: HostNode, ag: Agent, id: string, p: Procedure, fromStep: number): void {
    const steps = this.stepsOf(n, p);
    const boot = ag.boot;
    let i = fromStep;
    if (fromStep > steps.length) return this.violation(`${n.name}: ${p.kind} resumed at step ${fromStep} of ${steps.length}`);
    // Steps a retry skips must really be done: the core recorded them as done.
    for (let k = 0; k < fromStep; k++) {
      const st = steps[k]!;
      const q = st.target();
      if (st.check && q && !st.check(q)) return this.violation(`${n.name}: ${p.kind} skipped step "${st.name}" (${k + 1}/${steps.length}), which is not done`);
    }
    this.trace(`${n.name}: run ${p.kind}${fromStep ? ` from step ${fromStep + 1}` : ''}`);
    // Never within the step that asked for it: the runtime's procedures are asynchronous too.
    const fail = (error: string) => {
      this.trace(`${n.name}: ${p.kind} failed at step ${i + 1}/${steps.length}: ${error}`);
      if (n.agent?.boot === boot) this.input(n.name, { t: 'proc-failed', id, stepsDone: i, error });
    };
    const next = () => {
      if (n.agent?.boot !== boot || !n.hostUp) return; // the agent died: the procedure stops where it is
      if (i >= steps.length) {
        const pid = p.kind === 'prepare-secondary' ? n.prepared?.pid : undefined;
        return this.input(n.name, { t: 'proc-done', id, ...(pid !== undefined ? { pid } : {}) });
      }
      const st = steps[i]!;
      const q = st.target();
      if (st.needsQemu !== false && !q?.alive) return fail(`QEMU is gone (${st.name})`);
      const started = this.now;
      // A step may fail before it took effect, or after (its reply lost: a QMP timeout).
      const r = this.rng.next();
      const failP = this.faultsOn() ? this.o.stepFailP : 0;
      const failBefore = r < failP / 2;
      const failAfter = !failBefore && r < failP;
      const attempt = () => {
        // A command already sent still runs in QEMU when its agent dies meanwhile; the next step is never sent.
        if (!n.hostUp || (n.agent?.boot !== boot && this.now - started > 5)) return;
        if (st.needsQemu !== false && !q?.alive) return fail(`QEMU is gone (${st.name})`);
        if (q && st.needsQemu !== false && !this.responsive(q, st.oob === true)) {
          if (this.now - started >= STEP_TIMEOUT_MS) return fail(`step "${st.name}" timed out`);
          return void this.after(50, attempt);
        }
        if (failBefore) return fail(`step "${st.name}": injected error`);
        // The runtime's check: already done → skip (idempotent retry).
        if (!(st.check && q && st.check(q))) {
          const res = st.run(q);
          if (res === 'wait') return void this.after(50, () => (this.now - started > (st.timeoutMs ?? STEP_TIMEOUT_MS) ? fail(`step "${st.name}" timed out`) : attempt()));
          if (typeof res === 'string') return fail(res);
        }
        if (failAfter) return fail(`step "${st.name}": reply lost (it took effect)`);
        i++;
        if (n.agent?.boot === boot) this.input(n.name, { t: 'proc-progress', id, stepsDone: i, step: st.name });
        this.after(this.rng.range(0.5, st.ms ?? 10), next);
      };
      this.after(this.rng.range(0.5, 5), attempt);
    };
    this.after(0.1, next);
  }

  private stepsOf(n: HostNode, p: Procedure): ModelStep[] {
    const ours = () => n.qemu;
    const flag = (name: string, run?: (q: Qemu) => string | void): ModelStep => ({
      name,
      target: ours,
      check: (q) => q.applied.has(name),
      run: (q) => {
        const r = run?.(q!);
        if (typeof r === 'string') return r;
        q!.applied.add(name);
      },
    });
    const yank = (): ModelStep => ({ name: 'yank', target: ours, oob: true, run: (q) => this.yank(q!) });
    switch (p.kind) {
      case 'primary-failover':
        return [
          ...(p.yank ? [yank()] : []),
          flag('remove-replication-child'),
          flag('drive-del'),
          flag('del-proxy-objects', (q) => {
            // colo-compare is gone: what it held leaves (colo-compare.c, finalize flushes).
            const r = this.request;
            if (r?.on === q && (r.state === 'held' || r.state === 'blocked')) {
              if (r.write === null) r.write = this.applyWrite(q, false);
              this.after(1, () => this.answer(r));
            }
          }),
          flag('lost-heartbeat', (q) => this.failoverEnd(q)),
        ];
      case 'takeover':
        return [
          { name: 'tap', target: ours, needsQemu: false, run: () => void (n.tapOn = true) },
          ...(p.yank ? [yank()] : []),
          flag('nbd-server-stop', (q) => {
            q.nbd = false;
          }),
          flag('lost-heartbeat', (q) => this.failoverEnd(q)),
          flag('del-redirectors', (q) => void (q.secFilters = false)),
          flag('chardevs'),
          ...(p.resume ? [{ name: 'cont', target: ours, check: (q: Qemu) => !q.paused, run: (q: Qemu | null) => void (q!.paused = false) } satisfies ModelStep] : []),
        ];
      case 'fence':
        return [...(p.yank ? [yank()] : []), { name: 'stop', target: ours, check: (q) => q.paused, run: (q) => void (q!.paused = true) }];
      case 'unfence':
        return [{ name: 'cont', target: ours, check: (q) => !q.paused, run: (q) => void (q!.paused = false) }];
      case 'yank':
        return [yank()];
      case 'restart':
        return [
          { name: 'end-old', target: ours, needsQemu: false, run: (q) => void (q && this.endQemu(q, true, 'replaced by a restart')) },
          {
            name: 'start',
            target: ours,
            needsQemu: false,
            run: () => {
              n.qemu = this.newQemu(n.name, 'none');
              n.tapOn = true;
            },
            ms: 300,
          },
          {
            // launchNode + cont; then the agent attaches to it.
            name: 'cont',
            target: ours,
            run: (q) => {
              q!.paused = false;
              // The runtime attaches before it reports the restart done.
              if (n.agent) {
                n.agent.attached = q!.pid;
                this.input(n.name, { t: 'qemu-found', found: this.foundOf(q) });
              }
            },
          },
        ];
      case 'resume':
        return this.resumeSteps(n);
      case 'abort-resume':
        return [
          {
            name: 'abort',
            target: ours,
            run: (q) => {
              const s = this.session;
              if (s && !s.over && s.pq === q) this.breakEnd(s, q!, 'a failed resume is taken back');
              if (q!.mode === 'colo-primary') q!.mode = 'none';
              for (const f of ['resume-started', 'replication-child', 'proxy', 'x-colo', 'migrate']) q!.applied.delete(f);
              q!.paused = false;
            },
          },
        ];
      case 'prepare-secondary':
        return [
          { name: 'end-old', target: ours, needsQemu: false, run: (q) => void (q && this.endQemu(q, true, 'ended for a resync')) },
          {
            name: 'new-replica',
            target: ours,
            needsQemu: false,
            run: () => {
              // Never towards a newer disk: nothing acknowledged may be on this disk that the source lacks.
              const src = this.nodes[p.primary as NodeName];
              for (const w of n.disk) if (this.acked.has(w) && !src.disk.has(w)) return void this.violation(`resync of ${n.name} from ${src.name} overwrites acknowledged write ${w} that ${src.name} lacks`);
              if (n.prepared) this.endQemu(n.prepared, true, 'an older prepared secondary');
              n.disk = new Set();
            },
          },
          {
            name: 'start-incoming',
            target: ours,
            needsQemu: false,
            run: () => {
              n.prepared = this.newQemu(n.name, 'incoming');
              n.tapOn = false;
            },
            ms: 200,
          },
        ];
      case 'drop-secondary':
        return [{ name: 'drop', target: () => n.prepared, needsQemu: false, run: (q) => void (q && this.endQemu(q, true, 'prepared secondary dropped')) }];
      case 'adopt-secondary':
        return [
          {
            name: 'adopt',
            target: () => n.prepared,
            run: (q) => {
              if (!q || q.mode !== 'colo-secondary' || q.broken) return `the new secondary is not in COLO (${q?.mode ?? 'gone'})`;
              n.qemu = q;
              n.prepared = null;
              if (n.agent) n.agent.attached = q.pid;
              const boot = n.agent?.boot;
              const found = this.foundOf(q);
              this.after(0.5, () => {
                if (n.agent?.boot === boot) this.input(n.name, { t: 'qemu-found', found });
              });
            },
          },
        ];
    }
  }

  private resumeSteps(n: HostNode): ModelStep[] {
    const ours = () => n.qemu;
    const peer = this.nodes[n.peer];
    const target = () => peer.prepared;
    const linkOk = () => !this.links.replication.cut && peer.hostUp;
    let mirrorStart = 0;
    let cutSince: number | null = null;
    return [
      {
        name: 'mirror',
        target: ours,
        timeoutMs: 600_000,
        run: (q) => {
          q!.applied.add('resume-started');
          const t = target();
          if (!t?.alive || t.mode !== 'incoming') return 'the new secondary\'s NBD export went away';
          if (mirrorStart === 0) mirrorStart = this.now;
          // [resync] a cut cable stalls the mirror; no progress for 10 s → given up.
          if (!linkOk()) {
            cutSince ??= this.now;
            if (this.now - cutSince > 10_000) return 'the disk mirror made no progress for 10 s';
            return 'wait';
          }
          cutSince = null;
          if (this.now - mirrorStart < 300) return 'wait';
        },
      },
      { name: 'stop', target: ours, run: (q) => void (q!.paused = true) },
      {
        name: 'block-job-cancel',
        target: ours,
        run: (q) => {
          const t = target();
          if (!t?.alive || !linkOk()) return 'the mirror job ended with an error (final pass)';
          // The final pass can fail; the runtime checks BLOCK_JOB_COMPLETED's error (resume.ts).
          if (this.faultsOn() && this.rng.chance(this.o.stepFailP / 2)) return 'the mirror job ended with an error: injected';
          peer.disk = new Set(n.disk);
          void q;
        },
      },
      { name: 'replication-child', target: ours, check: (q) => q.applied.has('replication-child'), run: (q) => void q!.applied.add('replication-child') },
      { name: 'proxy', target: ours, check: (q) => q.applied.has('proxy'), run: (q) => void q!.applied.add('proxy') },
      {
        name: 'migrate',
        target: ours,
        ms: 500,
        run: (q) => {
          const t = target();
          if (!t?.alive || t.mode !== 'incoming' || !linkOk()) return 'migration to the new secondary failed';
          q!.applied.add('migrate');
          for (const f of ['lost-heartbeat', 'remove-replication-child', 'drive-del', 'del-proxy-objects', 'nbd-server-stop', 'del-redirectors', 'chardevs']) q!.applied.delete(f);
          q!.paused = false;
          t.paused = false;
          this.startSession(n.name, peer.name, q!, t);
        },
      },
      {
        name: 'first-checkpoint',
        target: ours,
        timeoutMs: CHECKPOINT_DELAY_MS + 5000,
        run: (q) => {
          const s = this.session;
          if (!s || s.pq !== q || s.over) return 'COLO ended before the first checkpoint';
          if (s.lastCheckpointAt <= s.startedAt) return 'wait';
          q!.applied.add('resume-done');
          q!.applied.delete('resume-started');
        },
      },
    ];
  }

  /** Yank (out of band): the links to the peer are shut; the stream breaks at this end. */
  private yank(q: Qemu): void {
    const s = this.session;
    if (s && !s.over && (s.pq === q || s.sq === q)) this.breakEnd(s, q, 'yanked');
    else if (s && (s.pq === q || s.sq === q) && !q.broken) {
      q.broken = true;
      q.brokenAt = this.now;
      this.qmpEvent(q, 'COLO_EXIT');
    }
    q.bqlUntil = Math.min(q.bqlUntil, this.now);
    this.answerQueries(q);
  }

  /** x-colo-lost-heartbeat: this end leaves COLO and runs on its own. */
  private failoverEnd(q: Qemu): string | void {
    // Out of COLO already: QEMU answers "The feature 'colo' is not enabled", which the runtime takes as done.
    if (q.mode !== 'colo-primary' && q.mode !== 'colo-secondary') return;
    const s = this.session;
    if (s && (s.pq === q || s.sq === q)) {
      if (!q.broken) this.breakEnd(s, q, 'failover requested');
    }
    q.mode = 'none';
    if (!q.broken) q.brokenAt = this.now;
    q.broken = true;
    // [compare] held answers leave once the proxy objects are gone.
    if (this.request?.on === q && (this.request.state === 'held' || this.request.state === 'blocked')) {
      if (this.request.write === null) this.request.write = this.applyWrite(q, false);
      this.answer(this.request);
    }
  }

  // ---- faults ----

  private fault(f: Fault): void {
    this.trace(`FAULT ${JSON.stringify(f)}`);
    switch (f.kind) {
      case 'kill-qemu': {
        const q = this.nodes[f.node].qemu;
        if (q) this.endQemu(q, this.nodes[f.node].hostUp, 'kill -9');
        return;
      }
      case 'freeze-qemu': {
        const q = this.nodes[f.node].qemu;
        if (!q) return;
        q.frozen = true;
        this.after(f.ms, () => {
          q.frozen = false;
          this.answerQueries(q);
          const s = this.session;
          if (s && !s.over && (s.pq === q || s.sq === q)) this.resumeStalled(s, f.ms);
        });
        return;
      }
      case 'kill-agent':
        this.killAgent(f.node, 'kill -9');
        this.after(f.ms, () => {
          if (this.nodes[f.node].hostUp && !this.nodes[f.node].agent) this.startAgent(f.node);
        });
        return;
      case 'power-loss':
      case 'reboot': {
        const n = this.nodes[f.node];
        if (!n.hostUp) return;
        n.hostUp = false;
        this.killAgent(f.node, f.kind);
        for (const q of [n.qemu, n.prepared]) if (q) this.endQemu(q, f.kind === 'reboot', f.kind);
        this.after(f.ms, () => {
          n.hostUp = true;
          this.deliverSilentResets();
          this.startAgent(f.node);
        });
        return;
      }
      case 'cut':
        for (const l of f.links) this.cut(l);
        this.after(f.ms, () => {
          for (const l of f.links) this.heal(l);
        });
        return;
      case 'garbage': {
        // The link refuses the line and closes the connection: what was in flight is lost; the agents reconnect.
        const l = this.links[f.link];
        l.epoch++;
        l.held = [];
        return;
      }
      case 'slow-link': {
        const l = this.links[f.link];
        l.delayMs = f.delayMs;
        this.after(f.ms, () => (l.delayMs = 0));
        return;
      }
      case 'witness-down':
        if (!this.o.witness) return;
        this.witness.up = false;
        this.witness.incarnation++;
        this.after(f.ms, () => this.witnessStart());
        return;
      case 'witness-restart':
        if (!this.o.witness) return;
        this.witness.incarnation++;
        this.witnessStart();
        return;
      case 'witness-slow':
        this.witness.slowMs = f.delayMs;
        this.after(f.ms, () => (this.witness.slowMs = 0));
        return;
      case 'witness-lossy':
        this.witness.lossy = true;
        this.after(f.ms, () => (this.witness.lossy = false));
        return;
      case 'reset-replication': {
        const s = this.session;
        if (s && !s.over && !this.links.replication.cut) {
          this.breakEnd(s, s.pq, 'the replication connection was reset');
          this.breakEnd(s, s.sq, 'the replication connection was reset');
        }
        return;
      }
    }
  }

  private witnessStart(): void {
    const w = this.witness;
    w.up = true;
    w.incarnation++;
    // A restarted witness: no lease, its durable record, and a grace period of twice the longest lease.
    w.state = initWitness(this.now, 2000, w.persisted);
    this.trace('witness: (re)started');
  }

  // ---- the client ----

  private servingNodes(): Qemu[] {
    const out: Qemu[] = [];
    for (const n of Object.values(this.nodes)) {
      const q = n.qemu;
      if (!q?.alive || q.paused || q.frozen || !n.hostUp || !n.tapOn) continue;
      if (this.links[n.name === 'a' ? 'lan-a' : 'lan-b'].cut) continue;
      if (q.mode === 'none' || q.mode === 'colo-primary') out.push(q);
    }
    return out;
  }

  private clientTick(): void {
    if (!this.request) this.request = { id: this.nextWrite, startedAt: this.now, write: null, on: null, state: 'routing' };
    const r = this.request;
    if (r.state === 'routing') {
      const serving = this.servingNodes();
      if (serving.length) this.serve(r, serving[0]!);
    }
    if (this.request === r && this.now - r.startedAt > 15_000) {
      this.trace(`client: request ${r.id} timed out`);
      this.request = null;
    }
    this.after(this.request ? 200 : 100, () => this.clientTick());
  }

  private applyWrite(q: Qemu, replicate: boolean): number {
    const w = this.nextWrite++;
    this.nodes[q.node].disk.add(w);
    const s = this.session;
    if (replicate && s && s.pq === q) this.nodes[s.s].disk.add(w);
    return w;
  }

  private serve(r: Request, q: Qemu): void {
    r.on = q;
    if (q.mode === 'none') {
      r.write = this.applyWrite(q, false);
      r.state = 'answering';
      this.after(this.rng.range(2, 20), () => this.answer(r));
      return;
    }
    // A COLO primary.
    const s = this.session;
    if (s && s.pq === q && !q.broken) {
      if (!s.over && !this.links.replication.cut && s.sq.alive && !s.sq.frozen && s.phase !== 'sending') {
        // [quorum] both children answer; [compare] the secondary sends the same answer.
        r.write = this.applyWrite(q, true);
        r.state = 'answering';
        this.after(this.rng.range(10, 60), () => (this.sessionHealthy(s) && !this.links.replication.cut ? this.answer(r) : void (r.state = 'held')));
        return;
      }
      // A silent secondary: the write waits on the NBD child [quorum].
      r.state = 'blocked';
      return;
    }
    // COLO broken on this end, failover not done: the write lands locally [quorum], its answer is held [compare].
    r.write = this.applyWrite(q, false);
    r.state = 'held';
  }

  private answer(r: Request): void {
    if (this.request !== r || !r.on?.alive || r.write === null) return;
    const q = r.on;
    // The answer needs the VM running and its way to the client.
    if (q.paused || q.frozen || this.links[q.node === 'a' ? 'lan-a' : 'lan-b'].cut || !this.nodes[q.node].tapOn) return void this.after(50, () => this.answer(r));
    // [compare] a COLO primary whose stream broke or stalled releases nothing until colo-compare is gone (or a checkpoint).
    if (q.mode === 'colo-primary' && !this.sessionHealthy() && !q.applied.has('del-proxy-objects')) return void (r.state = 'held');
    if (!this.writers().includes(q)) return this.violation(`write ${r.write} acknowledged by ${q.node}, which is not the VM's writer`);
    this.acked.add(r.write);
    this.request = null;
    this.checkDisk(q, `acknowledging write ${r.write}`);
  }

  private requestLost(): void {
    const r = this.request!;
    // TCP retransmits to the same address: whichever VM serves next executes it afresh.
    r.on = null;
    r.write = null;
    r.state = 'routing';
  }

  // ---- invariants ----

  /** The VM's writers: QEMUs that run it (or will when thawed) and may acknowledge writes. */
  private writers(): Qemu[] {
    const out: Qemu[] = [];
    for (const n of Object.values(this.nodes)) {
      const q = n.qemu;
      if (!q?.alive || q.paused) continue;
      // A COLO primary acknowledges writes while its stream is healthy, or once colo-compare is gone (failing over).
      if (q.mode === 'none' || (q.mode === 'colo-primary' && ((this.sessionHealthy() && this.session!.pq === q) || q.applied.has('del-proxy-objects')))) out.push(q);
    }
    return out;
  }

  private lastWriter: Qemu | null = null;

  private checkWriters(): void {
    const ws = this.writers();
    if (ws.length > 1) return this.violation(`two writers: ${ws.map((q) => `${q.node} (${q.mode}, pid ${q.pid})`).join(' and ')}`);
    const w = ws[0] ?? null;
    if (w && w !== this.lastWriter) this.checkDisk(w, 'becoming the writer');
    this.lastWriter = w;
    if (this.now >= this.o.quietAt && w && this.servingNodes().length && this.runAgainAt === null) this.runAgainAt = this.now;
  }

  /** No acknowledged write is missing from the disk of the node that runs the VM. */
  private checkDisk(q: Qemu, when: string): void {
    const disk = this.nodes[q.node].disk;
    for (const w of this.acked) {
      if (!disk.has(w)) return this.violation(`${q.node} runs the VM without acknowledged write ${w} (${when})`);
    }
  }

  /** `status` truthfulness: PROTECTED only while checkpoints actually flow. */
  private checkStatus(n: HostNode): void {
    const core = n.agent!.core;
    const s = this.session;
    if (isProtected(core)) {
      // Within the detection bound: a checkpoint completed within stallMs, or one is under way for less than
      // checkpointTimeoutMs, in the COLO session of this node's QEMU, whose end has not broken (COLO_EXIT) for long.
      const q = n.qemu;
      const graceMs = 300;
      const cfg = core.cfg;
      const mine = !!s && !!q && (s.pq === q || s.sq === q);
      const endBroken = !!q && q.broken && q.brokenAt < this.now - graceMs;
      if (!q && this.now - n.qemuEndedAt <= graceMs) return;
      const flowing = mine && (this.now - s.lastCheckpointAt <= cfg.stallMs + graceMs || (s.phase === 'sending' && this.now - s.phaseSince <= cfg.checkpointTimeoutMs + graceMs));
      if (!flowing || endBroken) this.violation(`${n.name}: status says PROTECTED, but ${!mine ? 'its QEMU is in no COLO session' : endBroken ? 'its COLO stream broke' : `no checkpoint for ${Math.round(this.now - s!.lastCheckpointAt)} ms`}`);
    }
    // Liveness bookkeeping: protected again = a healthy session that both agents call protected.
    if (this.now >= this.o.quietAt) {
      const both = (['a', 'b'] as const).every((x) => this.nodes[x].agent && isProtected(this.nodes[x].agent!.core));
      const ok = both && this.sessionHealthy();
      if (ok) {
        this.protectedSince ??= this.now;
        this.protectedAgainAt ??= this.now;
        if (this.now - this.protectedSince >= STABLE_MS) this.done = true;
      } else this.protectedSince = null;
    }
  }

  private checkLiveness(end: number): void {
    const quiet = this.o.quietAt;
    if (this.runAgainAt === null || this.runAgainAt - quiet > RUN_BOUND_MS) {
      return this.violation(`the VM did not run again within ${RUN_BOUND_MS / 1000} s after the faults stopped (${this.describe()})`);
    }
    if (this.protectedAgainAt === null || this.protectedAgainAt - quiet > PROTECT_BOUND_MS) {
      return this.violation(`not protected again within ${PROTECT_BOUND_MS / 1000} s after the faults stopped (${this.describe()})`);
    }
    if (!this.done && this.now >= end) this.violation(`protection did not hold for ${STABLE_MS / 1000} s at the end (${this.describe()})`);
  }

  describe(): string {
    return (['a', 'b'] as const)
      .map((x) => {
        const n = this.nodes[x];
        const st = n.agent ? statusOf(n.agent.core) : null;
        return `${x}: ${st ? `${st.role}${st.work ? ` [${st.work.kind}/${st.work.phase}]` : ''} ${st.lastDecision ?? st.waiting ?? ''}` : 'no agent'}; qemu ${n.qemu ? `${n.qemu.mode}${n.qemu.paused ? ' paused' : ''}${n.qemu.broken ? ' broken' : ''}` : 'none'}; disk ${n.record.epoch ? `${n.record.epoch.gen}/${n.record.epoch.by}` : '?'}`;
      })
      .join(' | ');
  }
}

interface ModelStep {
  name: string;
  target: () => Qemu | null;
  /** What the runtime's check would find: the step's effect is already in place. */
  check?: (q: Qemu) => boolean;
  /** Applies the step; a string is QEMU's error; 'wait' polls again. */
  run: (q: Qemu | null) => string | void | 'wait';
  oob?: boolean;
  needsQemu?: boolean;
  ms?: number;
  timeoutMs?: number;
}

// Re-exported for tests that drive a heartbeat by hand.
export { heartbeatSchema };
