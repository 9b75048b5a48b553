/**
 * The simulated world: two hosts, each with an agent (the real agent core,
 * driven by the runtime's own driver), a modelled QEMU and a disk; a witness
 * (the real witness core); the cables between them; a client writing to the
 * VM. Everything happens through one event queue, in virtual time, from one
 * schedule (schedule-types.ts). The concerns live apart:
 *
 *   qemu.ts        QEMU processes, the COLO session, where writes land
 *   network.ts     cables, one-way cuts, the agents' messages
 *   witness.ts     the witness behind its links, and its grants
 *   agents.ts      the agent processes (node/driver.ts around the core)
 *   procedures.ts  the runtime's step lists (node/procedures.ts), step by step
 *   faults.ts      the faults of the schedule
 *   client.ts      the client and its acknowledged writes
 *   invariants.ts  what is checked, each rule by name
 */
import { EventQueue } from './queue.js';
import { Rng } from './rng.js';
import { simSetup, type SimSetup } from './setup.js';
import { Qemus, type SimQemu } from './qemu.js';
import { Network } from './network.js';
import { SimWitness } from './witness.js';
import { Agents, type SimAgent } from './agents.js';
import { Procedures } from './procedures.js';
import { Faults } from './faults.js';
import { Client } from './client.js';
import { Invariants, PROTECT_BOUND_MS, STABLE_MS, EVENTS_PER_INSTANT_MAX, type Violation } from './invariants.js';
import { statusOf } from '../node/core/core.js';
import { TICK_MS } from '../node/driver.js';
import type { Epoch } from '../pair/epoch.js';
import type { ReplicaNote } from '../node/core/types.js';
import { STORED_LEASE_MS, type NodeName, type Schedule } from './schedule-types.js';

export interface Host {
  name: NodeName;
  peer: NodeName;
  /** Powered. */
  up: boolean;
  /** Lost for good. */
  gone: boolean;
  /** The whole host stopped (host-pause); what would run on it waits in onResume. */
  paused: boolean;
  onResume: Array<() => void>;
  agent: SimAgent | null;
  qemu: SimQemu | null;
  /** A new secondary being prepared for the peer's resync (not ours until adopted). */
  prepared: SimQemu | null;
  /** The data on this node's disk (its VM's disk; a secondary's replica). */
  disk: Set<number>;
  /** A secondary: what its VM wrote since the last checkpoint (its active disk). */
  ownSinceCheckpoint: Set<number>;
  /** Writes forwarded to this node's disk, as a replica, that failed there (its disk error, or its QEMU gone). */
  forwardFailed: Set<number>;
  /** generation.json: durable. */
  record: { state: 'ok'; epoch: Epoch; pending: Epoch | undefined } | { state: 'missing' } | { state: 'unreadable' };
  /** replica-note.json (what its primary said its disk lacks): durable, read by its agent at start. */
  replicaNote: ReplicaNote | undefined;
  tapOn: boolean;
  /** When its QEMU last ended (its agent hears of it a moment later). */
  qemuEndedAt: number;
  diskErrors: { until: number; p: number } | null;
  qmpLate: { until: number } | null;
  slowDisk: { until: number; delayMs: number } | null;
  /** The procedure its agent runs now, since when (the decision to run it was taken then), and its disk record then. */
  procedure: { kind: string; startedAt: number; record: Host['record'] } | null;
  /** The procedure whose step took effect on this host last: a late QMP command's, after its agent gave up or died, too. */
  effectOf: Host['procedure'];
  /** When (a step's effect lands within one event: only then is effectOf what made a change). */
  effectAt: number;
}

export interface RunOptions {
  /** Keep every trace line (for replaying one schedule), else only the last ones. */
  traceAll?: boolean;
  /** Stop at the first violation (the mutation check: only the first catch counts). */
  stopAtFirst?: boolean;
}

export interface SimResult {
  violations: Violation[];
  /** ms after the faults stopped until the VM ran again, and until it was protected again (null: never). */
  runAgainMs: number | null;
  protectedAgainMs: number | null;
  /** The longest the VM was not running while a node could have run it (liveness during faults). */
  longestDownWhileAbleMs: number;
  /** Host losses prompt-takeover judged, and the slowest takeover decision among them (ms after the loss). */
  hostLossesJudged: number;
  slowestTakeoverMs: number;
  /** Replication cuts prompt-cut judged, and the slowest decision to carry on alone among them (ms after the cut). */
  cutsJudged: number;
  slowestCutMs: number;
  /** Agent restarts restart-kept judged. */
  restartsJudged: number;
  endedAt: number;
  acked: number;
  steps: number;
  trace: string[];
}

export class World {
  readonly q = new EventQueue();
  now = 0;
  /** One stream per concern: a change in one part of the model moves as little as possible elsewhere. */
  readonly rng: Record<'net' | 'qemu' | 'proc' | 'client' | 'agent' | 'disk' | 'witness' | 'setup' | 'events', Rng>;
  readonly setup: SimSetup;
  readonly hosts: Record<NodeName, Host>;
  readonly qemu: Qemus;
  readonly net: Network;
  readonly witness: SimWitness;
  readonly agents: Agents;
  readonly procs: Procedures;
  readonly faults: Faults;
  readonly client: Client;
  readonly check: Invariants;
  readonly acked = new Set<number>();
  steps = 0;
  private nextWrite = 1;
  private readonly traceLines: string[] = [];

  constructor(
    readonly sched: Schedule,
    readonly opts: RunOptions = {},
  ) {
    // New streams go last: the draws of the others, and so every stored schedule, stay as they were.
    const streams = ['net', 'qemu', 'proc', 'client', 'agent', 'disk', 'witness', 'setup', 'events'] as const;
    this.rng = Object.fromEntries(streams.map((k, i) => [k, new Rng((sched.seed * 7919 + i * 104_729) >>> 0)])) as World['rng'];
    this.setup = simSetup({ witness: sched.witness, paths: sched.paths, leaseMs: sched.leaseMs ?? STORED_LEASE_MS, ...(sched.pauseIntoColo ? { pauseIntoColo: sched.pauseIntoColo } : {}) });
    const run = `run-${this.rng.setup.hex(8)}`;
    const epoch: Epoch = { run, gen: 1, by: 'up' };
    const mk = (name: NodeName): Host => ({
      name,
      peer: name === 'a' ? 'b' : 'a',
      up: true,
      gone: false,
      paused: false,
      onResume: [],
      agent: null,
      qemu: null,
      prepared: null,
      disk: new Set(),
      ownSinceCheckpoint: new Set(),
      forwardFailed: new Set(),
      record: { state: 'ok', epoch, pending: undefined },
      replicaNote: undefined,
      tapOn: name === 'a',
      qemuEndedAt: -1e9,
      diskErrors: null,
      qmpLate: null,
      slowDisk: null,
      procedure: null,
      effectOf: null,
      effectAt: -1,
    });
    this.hosts = { a: mk('a'), b: mk('b') };
    this.qemu = new Qemus(this);
    this.net = new Network(this);
    this.witness = new SimWitness(this);
    this.agents = new Agents(this);
    this.procs = new Procedures(this);
    this.faults = new Faults(this);
    this.client = new Client(this);
    this.check = new Invariants(this);
    // `up`: both QEMUs in COLO, a primary, b secondary.
    const pq = this.qemu.create('a', 'colo-primary');
    const sq = this.qemu.create('b', 'colo-secondary');
    this.hosts.a.qemu = pq;
    this.hosts.b.qemu = sq;
    this.qemu.startSession('a', 'b', pq, sq);
    for (const n of ['a', 'b'] as const) this.agents.start(n);
    this.faults.schedule(sched.faults);
    for (const r of sched.operatorResyncs) {
      this.at(r.at, () => {
        if (!this.hosts[r.node].agent) return;
        this.trace(`operator: lockstep resync, to ${r.node}'s agent`);
        this.agents.input(r.node, { t: 'operator-resync' });
      });
    }
    this.client.start();
    const live = () => {
      this.check.duringFaults();
      this.after(TICK_MS, live);
    };
    this.after(TICK_MS, live);
  }

  run(): SimResult {
    const end = this.sched.quietAt + PROTECT_BOUND_MS + STABLE_MS;
    let atThisInstant = 0;
    while (!this.check.stable || this.now < this.sched.quietAt) {
      const e = this.q.pop();
      if (!e || e.at > end) break;
      atThisInstant = e.at === this.now ? atThisInstant + 1 : 0;
      if (atThisInstant > EVENTS_PER_INSTANT_MAX) {
        this.check.violation('livelock', `more than ${EVENTS_PER_INSTANT_MAX} events at ${(this.now / 1000).toFixed(3)} s: simulated time no longer moves`);
        return this.result();
      }
      this.now = e.at;
      e.fn();
      this.check.afterEvent();
      if (this.opts.stopAtFirst && this.check.violations.length) break;
    }
    if (!(this.opts.stopAtFirst && this.check.violations.length)) this.check.finish(end);
    return this.result();
  }

  private result(): SimResult {
    return {
      violations: this.check.violations,
      runAgainMs: this.check.runAgainAt === null ? null : this.check.runAgainAt - this.sched.quietAt,
      protectedAgainMs: this.check.protectedAgainAt === null ? null : this.check.protectedAgainAt - this.sched.quietAt,
      longestDownWhileAbleMs: this.check.longestDownWhileAbleMs,
      hostLossesJudged: this.check.hostLossesJudged,
      slowestTakeoverMs: this.check.slowestTakeoverMs,
      cutsJudged: this.check.cutsJudged,
      slowestCutMs: this.check.slowestCutMs,
      restartsJudged: this.check.restartsJudged,
      endedAt: this.now,
      acked: this.acked.size,
      steps: this.steps,
      trace: this.traceLines,
    };
  }

  at(t: number, fn: () => void): void {
    this.q.push(Math.max(t, this.now), fn);
  }

  after(ms: number, fn: () => void): void {
    this.q.push(this.now + ms, fn);
  }

  trace(line: string): void {
    this.traceLines.push(`${(this.now / 1000).toFixed(3).padStart(8)} ${line}`);
    if (!this.opts.traceAll && this.traceLines.length > 400) this.traceLines.splice(0, this.traceLines.length - 300);
  }

  /** Injected failures (QMP steps, disk writes) are faults too: they stop with the others. */
  faultsOn(): boolean {
    return this.now < this.sched.quietAt;
  }

  nextWriteId(): number {
    return this.nextWrite++;
  }

  describe(): string {
    return (['a', 'b'] as const)
      .map((x) => {
        const h = this.hosts[x];
        const st = h.agent ? statusOf(h.agent.driver.core) : null;
        const q = h.qemu;
        const rec = h.record.state === 'ok' ? `${h.record.epoch.gen}/${h.record.epoch.by}` : h.record.state;
        return `${x}: ${h.gone ? 'gone; ' : !h.up ? 'down; ' : h.paused ? 'paused; ' : ''}${st ? `${st.role}${st.work ? ` [${st.work.kind}/${st.work.phase}]` : ''} ${st.lastDecision ?? st.waiting ?? ''}` : 'no agent'}; qemu ${q ? `${q.colo}${q.paused ? ' paused' : ''}${q.broken ? ' broken' : ''}` : 'none'}; disk ${rec}`;
      })
      .join(' | ');
  }
}
