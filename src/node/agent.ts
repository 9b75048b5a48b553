/**
 * lockstep agent: the runtime around the agent core (core/core.ts), one per
 * node. It does the I/O and nothing else: it attaches to its node's QEMU over
 * QMP (and re-attaches after its own restart), reaches the peer agent on
 * every heartbeat path through its channel (peer-channel.ts: the VM's own
 * links, or its daemon's session with the peer host) and keeps a link to
 * the witness, and turns
 * the core's effects into QMP procedures, messages, files and signals. What
 * happened comes back to the core as inputs, with the time. Every decision
 * (failover, fence, resync, restart) and its reason is the core's.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import type { ResolvedConfig } from '../config/load.js';
import { QmpClient } from '../qmp/client.js';
import { isOurQemu, stopPid } from '../qemu/process.js';
import { IDS } from '../qemu/cmdline.js';
import { queryColoStatus } from '../colo/startup.js';
import { RESYNC_JOB, canPauseIntoColo } from '../colo/resume.js';
import { ColoStepError, hasBlockNode, hasObject, runSteps } from '../colo/steps.js';
import { readState, recordFailover, recordOwnQemu, type NodeState, type PairState } from '../pair/state.js';
import { readDiskRecord, readReplicaNote, replicaNoteFile, writeDiskRecord, writeReplicaNote } from '../pair/generation.js';
import { dropSecondary, type PreparedSecondary } from '../pair/resync.js';
import { procedurePlan, type ProcedureHost, type ProcedurePlan } from './procedures.js';
import { imageInfo } from '../qemu/images.js';
import { agentSocket, type AgentStatus } from '../pair/agents.js';
import { OwnLinks, pairPaths, type PeerChannel } from './peer-channel.js';
import { WitnessArbiter, witnessClientName } from './witness.js';
import type { Arbiter } from './arbiter.js';
import type { WitnessReply } from './wire.js';
import { initCore, statusOf, mayBeginAlone } from './core/core.js';
import type { CoreState, CoreStatus, Effect, Input, InputBody, ProbeWhat, Procedure, QemuFound } from './core/types.js';
import { AgentDriver, ATTACH_RETRY_MS, PROBE_TIMEOUT_MS, TICK_MS, type AgentIo } from './driver.js';
import { coreConfig } from './timings.js';
import type { Epoch } from '../pair/epoch.js';
import { sleep } from '../util/time.js';
import { LockstepError, errorMessage } from '../util/errors.js';

/** What a channel to the peer agent is made from: the VM, the two nodes, their paths, the agents' settings. */
export interface ChannelSpec {
  vm: string;
  name: string;
  peer: string;
  paths: Array<{ local: string; remote: string }>;
  agents: NonNullable<ResolvedConfig['agents']>;
  log: pino.Logger;
}

/**
 * What a daemon watches of its agents (metrics, the event journal, the
 * dashboard), without a say in anything: every input the core took, with its
 * time, and the effects it asked for (each decision and record with its
 * reason), and our QEMU's events with their data. Called after the effects
 * were carried out; what it throws is logged and ignored.
 */
export interface AgentObserver {
  stepped(input: Input, effects: readonly Effect[], status: () => CoreStatus): void;
  qemuEvent(event: string, data: Record<string, unknown> | undefined): void;
}

/** The VM's own links (a pair run by lockstep up, one agent process per node). */
export function ownLinks(s: ChannelSpec): PeerChannel {
  const a = s.agents;
  return new OwnLinks({ name: s.name, peer: s.peer, secret: a.secret, port: a.port, paths: s.paths, heartbeatIntervalMs: a.heartbeatIntervalMs, heartbeatTimeoutMs: a.heartbeatTimeoutMs, log: s.log });
}

export class Agent {
  private readonly log: pino.Logger;
  private readonly a: NonNullable<ResolvedConfig['agents']>;
  private pair: PairState;
  private me: NodeState;
  private peer: NodeState;
  private driver!: AgentDriver;
  private qmp: QmpClient | undefined;
  /** Our QEMU can pause before its switchover into COLO (its resume goes live): asked when we attach to it. */
  private pauseIntoColo = false;
  private prepared: PreparedSecondary | undefined;
  /** Procedures under way: stop() lets them end (bounded) before it drops a new secondary one of them may start. */
  private readonly running = new Set<Promise<void>>();
  private readonly channel: PeerChannel;
  /** Who grants this VM's writer lease (the witness), when the pair has one. */
  private arbiter: Arbiter | undefined;
  private control: net.Server | undefined;
  private tick: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly c: ResolvedConfig,
    readonly name: string,
    logStream: pino.DestinationStream = process.stdout,
    /** When the agent's own logic fails (a broken invariant): by default the process ends (a supervisor restarts it). */
    private readonly onFatal: (err: unknown) => void = () => process.exit(70),
    /** How to reach the peer agent: by default the VM's own links; a daemon gives its host sessions. */
    makeChannel: (s: ChannelSpec) => PeerChannel = ownLinks,
    /** Who watches the agent (its daemon); nobody by default. */
    private readonly observer?: AgentObserver,
  ) {
    if (!c.agents) throw new LockstepError(`${c.file}: no agents section`, { hint: 'add agents: { secret: ... } to run node agents' });
    this.a = c.agents;
    this.log = pino({ base: { node: name }, timestamp: pino.stdTimeFunctions.isoTime }, logStream);
    const s = readState(c.stateDir);
    const me = s?.nodes.find((n) => n.name === name);
    const peer = s?.nodes.find((n) => n.name !== name);
    if (!s || !me || !peer) throw new LockstepError(`node "${name}" is not part of the running pair "${c.name}"`, { hint: `start the pair with lockstep up -c ${c.file}` });
    this.pair = s;
    this.me = me;
    this.peer = peer;
    const mine = this.a.links?.[me.name] ?? [me.address];
    const theirs = this.a.links?.[peer.name] ?? [peer.address];
    this.channel = makeChannel({ vm: c.name, name, peer: peer.name, paths: pairPaths(mine, theirs), agents: this.a, log: this.log });
  }

  private get dataDir(): string {
    return path.dirname(this.me.qmpSocket);
  }

  async start(): Promise<void> {
    const rec = readDiskRecord(this.dataDir);
    if (rec.state !== 'ok') this.log.error({ file: path.join(this.dataDir, 'generation.json'), ...(rec.state === 'unreadable' ? { error: rec.error } : {}) }, `our disk's record is ${rec.state}: its epoch is unknown`);
    const size = await imageInfo(this.me.disk).then((i) => i['virtual-size'], () => 0);
    const note = readReplicaNote(this.dataDir);
    if (note.error) this.log.error({ file: replicaNoteFile(this.dataDir), error: note.error }, 'the note of what our disk lacks cannot be read: taken to say it lacks a write (it restarts no VM and takes over nothing before a resync)');
    else if (note.note && (note.note.missedWrite || note.note.forwardedWriteFailed)) this.log.warn({ note: note.note }, `our disk lacks a write, said our primary (${note.note.why}, ${note.note.at}): until a resync`);
    const core = initCore(coreConfig(this.c, this.name, this.peer.name, size), performance.now(), crypto.randomUUID(), {
      epoch: rec.state === 'ok' ? rec.record.epoch : undefined,
      pending: rec.state === 'ok' ? rec.record.pending : undefined,
      ...(note.note ? { note: { missedWrite: note.note.missedWrite, forwardedWriteFailed: note.note.forwardedWriteFailed } } : {}),
    });
    if (this.a.witness) {
      const [host, port] = this.a.witness.split(':');
      // The lease of this VM (its name), at the witness all the hosts of its VMs share.
      // With the VM's own key it proves that as "VM.NODE" (only this VM's lease); else the shared secret.
      this.arbiter = new WitnessArbiter(this.c.name, {
        name: this.a.witnessKey ? witnessClientName(this.c.name, this.name) : this.name,
        secret: this.a.witnessKey ?? this.a.secret,
        host: host!,
        port: Number(port),
        onReply: (r: WitnessReply) => this.input({ t: 'witness-reply', reply: r }),
        onRefuse: (why) => this.log.warn({ why }, 'witness link refused'),
      });
    }
    this.driver = new AgentDriver(core, this.io(), (err, invariant) => this.fatal(err, invariant));
    await this.channel.open({
      link: (path, up) => this.input({ t: 'peer-link', path, up }),
      message: (path, msg) => this.input({ t: 'peer-message', path, msg }),
    });
    await this.startControl();
    this.tick = setInterval(() => this.onTick(), TICK_MS);
    this.log.info({ paths: this.channel.paths, witness: this.a.witness ?? null, epoch: this.core.disk.epoch ?? null }, 'agent started');
    void this.attach();
  }

  // ---- the core, through the driver ----

  private get core(): CoreState {
    return this.driver.core;
  }

  /** Feeds one input to the core (now) and carries out its effects (driver.ts). */
  private input(i: InputBody): void {
    if (this.stopped) return;
    this.driver.input(i);
  }

  /** Tells the observer something; its failure is its own, never the agent's. */
  private tell(f: () => void): void {
    try {
      f();
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, 'the agent\'s observer failed (ignored)');
    }
  }

  /** A broken invariant or a bug: the agent stops (its QEMU runs on; a supervisor restarts the agent, which re-attaches). */
  private fatal(err: unknown, invariant: boolean): void {
    this.log.fatal({ err: errorMessage(err), stack: (err as Error).stack, invariant }, 'agent stops: its own logic failed');
    void this.stop().finally(() => this.onFatal(err));
  }

  private onTick(): void {
    // A link on which nothing arrives (a peer host that vanished without a reset) is closed and dialled again.
    this.channel.tick(performance.now());
    this.input({ t: 'tick' });
  }

  /** The driver's I/O: what the core's effects become on this host. */
  private io(): AgentIo {
    return {
      now: () => performance.now(),
      channel: this.channel,
      arbiter: this.arbiter,
      runProcedure: (id, p, fromStep) => {
        const run = this.run(id, p, fromStep).finally(() => this.running.delete(run));
        this.running.add(run);
      },
      queryQemu: (id, oob) => void this.query(id, oob),
      killQemu: (why) => {
        if (isOurQemu(this.me.pid, this.me.qmpSocket)) {
          this.log.error({ pid: this.me.pid, why }, 'ending our QEMU (SIGKILL)');
          process.kill(this.me.pid, 'SIGKILL');
        }
      },
      persistDisk: (id, epoch, pending, why) => this.persistDisk(id, epoch, pending, why),
      noteReplica: (note, why) => {
        try {
          writeReplicaNote(this.dataDir, { ...note, why });
        } catch (err) {
          this.log.error({ file: replicaNoteFile(this.dataDir), error: errorMessage(err) }, 'could not write the note of what our disk lacks: an agent started again would not know it');
        }
      },
      probePeer: (id, what) => void this.probePeer(what).then((alive) => this.input({ t: 'probe-result', id, alive })),
      record: (event, detail) => this.record(event, detail),
      decision: (action, why) => this.log.warn({ action, why }, `decision: ${action}`),
      log: (level, msg, fields) => this.log[level](fields ?? {}, msg),
      ...(this.observer ? { stepped: (input: Input, effects: readonly Effect[], core: CoreState) => this.tell(() => this.observer!.stepped(input, effects, () => statusOf(core))) } : {}),
    };
  }

  private persistDisk(id: string, epoch: Epoch | undefined, pending: Epoch | undefined, why: string): void {
    let ok = true;
    let error: string | undefined;
    try {
      if (!epoch) throw new Error('no epoch to write');
      writeDiskRecord(this.dataDir, { epoch, ...(pending ? { pending } : {}), at: new Date().toISOString(), why });
    } catch (err) {
      ok = false;
      error = errorMessage(err);
    }
    this.input({ t: 'disk-persisted', id, ok, ...(error ? { error } : {}) });
  }

  // ---- QEMU ----

  /**
   * Attaches to our QEMU (if it runs) and tells the core what it found. A
   * QEMU whose main loop does not answer (a checkpoint stuck on a silent link
   * holds the big lock; QMP's negotiation needs it) is tried again every
   * 0.5 s while the core waits (core.ts, attachBoundMs); past that bound the
   * core ends it, and the next try finds none.
   */
  private async attach(): Promise<void> {
    for (let attempt = 1; !this.stopped; attempt++) {
      if (!isOurQemu(this.me.pid, this.me.qmpSocket)) {
        this.log.warn({ pid: this.me.pid }, 'our QEMU is not running');
        return this.input({ t: 'qemu-found', found: notRunning() });
      }
      try {
        const qmp = await QmpClient.connect(this.me.qmpSocket, { timeoutMs: 3000 });
        try {
          const found = { ...(await describeQemu(qmp)), ...(await this.diskSize()) };
          this.pauseIntoColo = await pausesIntoColo(qmp);
          this.own(qmp);
          this.log.info({ found }, 'attached to our QEMU');
          return this.input({ t: 'qemu-found', found });
        } catch (err) {
          qmp.destroy();
          throw err;
        }
      } catch (err) {
        if (attempt === 1) this.log.warn({ err: errorMessage(err) }, 'cannot attach to our QEMU yet');
        await sleep(ATTACH_RETRY_MS);
      }
    }
  }

  /** The size of our disk as it is now (a replica made by a resync after this agent started), when it can be read. */
  private async diskSize(): Promise<{ diskSizeBytes?: number }> {
    const size = await imageInfo(this.me.disk).then((i) => i['virtual-size'], () => 0);
    return size > 0 ? { diskSizeBytes: size } : {};
  }

  /** Makes `qmp` our QEMU's connection: its events and its end go to the core. */
  private own(qmp: QmpClient): void {
    this.qmp = qmp;
    qmp.on('event', (e) => {
      if (this.qmp !== qmp) return;
      if (this.observer) this.tell(() => this.observer!.qemuEvent(e.event, e.data));
      // Its age by QEMU's timestamp (the same host's wall clock): what we read late was sent earlier.
      if (e.event === 'STOP' || e.event === 'RESUME' || e.event === 'COLO_EXIT' || e.event === 'SHUTDOWN') this.input({ t: 'qemu-event', event: e.event, ageMs: Math.max(0, Date.now() - e.time) });
      if (e.event === 'QUORUM_REPORT_BAD') {
        // block/quorum.c: a child of our disk's quorum failed an operation (its node-name, the error); a read is
        // served by the next child, a failed write completed on the other one.
        const d = (e.data ?? {}) as { type?: string; 'node-name'?: string; error?: string };
        if (d.type !== 'read') this.input({ t: 'quorum-bad', child: d['node-name'] === IDS.replicationNode ? 'replica' : 'local', error: d.error ?? `${d.type ?? 'write'} failed` });
      }
    });
    qmp.on('disconnect', () => {
      if (this.stopped || this.qmp !== qmp) return;
      this.qmp = undefined;
      const gone = !isOurQemu(this.me.pid, this.me.qmpSocket);
      this.log.error({ processGone: gone }, 'lost the QMP connection to our QEMU');
      this.input({ t: 'qemu-lost', processGone: gone });
      if (!gone) void sleep(200).then(() => this.attach());
    });
  }

  private async query(id: string, oob: boolean): Promise<void> {
    const qmp = this.qmp;
    if (!qmp) return;
    try {
      // The core times the answer; this bound only ends the promise.
      if (oob) {
        if (!qmp.oobEnabled) return;
        await qmp.execute('query-yank', undefined, { oob: true, timeoutMs: 60_000 });
        if (this.qmp === qmp) this.input({ t: 'qemu-answer', id });
        return;
      }
      const st = await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 60_000 });
      // Only what says for sure whether the VM runs: a checkpoint ('colo'), a migration and the like say nothing.
      const paused = st.status === 'paused' ? true : st.status === 'running' ? false : undefined;
      if (this.qmp === qmp) this.input({ t: 'qemu-answer', id, ...(paused !== undefined ? { paused } : {}) });
    } catch {
      // No answer: the core's watchdog counts the silence.
    }
  }

  /**
   * A probe of the peer when its agent is silent on every path, a TCP connect to the VM's NBD port on the peer's
   * replication address, bounded by PROBE_TIMEOUT_MS:
   * - `qemu` (a primary): does the secondary's QEMU answer? Only an accept says yes;
   * - `host` (a secondary): does the primary's host answer? An accept, or a refusal from its kernel (nothing listens
   *   there on a primary), says yes; no answer in time, or no route, says no.
   */
  private probePeer(what: ProbeWhat): Promise<boolean> {
    return new Promise((resolve) => {
      const sock = net.createConnection({ host: this.peer.address, port: this.pair.endpoints.nbdPort, localAddress: this.me.address, timeout: PROBE_TIMEOUT_MS });
      sock.once('connect', () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('timeout', () => {
        sock.destroy();
        resolve(false);
      });
      sock.once('error', (err: NodeJS.ErrnoException) => resolve(what === 'host' && err.code === 'ECONNREFUSED'));
    });
  }

  // ---- procedures ----

  /**
   * Runs procedure `p` from `fromStep`: its steps (procedures.ts), reported to
   * the core as they are done; a failure says how many were done.
   */
  private async run(id: string, p: Procedure, fromStep: number): Promise<void> {
    let mirrorPct = -1;
    let plan: ProcedurePlan | undefined;
    try {
      plan = procedurePlan(p, this.procedureHost(), {
        onUpdate: (what) => this.log.info({ procedure: p.kind, what }, 'procedure'),
        onMirror: (m) => {
          const pct = Math.floor((100 * m.offset) / Math.max(1, m.len) / 10) * 10;
          if (pct !== mirrorPct) this.log.info({ offset: m.offset, len: m.len }, `mirror ${pct}%`);
          mirrorPct = pct;
          this.input({ t: 'proc-progress', id, stepsDone: fromStep, step: 'mirroring our disk', mirror: { offset: m.offset, len: m.len } });
        },
      });
      let current = '';
      await runSteps(plan.name, plan.steps, {
        fromStep,
        onStep: (name) => {
          current = name;
          this.log.info({ procedure: p.kind, step: name }, 'step');
        },
        onProgress: (stepsDone) => this.input({ t: 'proc-progress', id, stepsDone, step: `${stepsDone} steps done${current ? ` (${current})` : ''}` }),
      });
      const pid = plan.pid();
      this.reloadPair();
      this.input({ t: 'proc-done', id, ...(pid !== undefined ? { pid } : {}) });
    } catch (err) {
      await plan?.cleanup().catch((e: unknown) => this.log.error({ err: errorMessage(e) }, `${p.kind}: cleaning up after the failure failed`));
      // A step of the procedure failed: the retry continues from there; anything else: from where this attempt began.
      const stepsDone = err instanceof ColoStepError ? err.stepsDone : fromStep;
      this.input({ t: 'proc-failed', id, stepsDone, error: errorMessage(err) });
    } finally {
      plan?.close();
    }
  }

  private needQmp(): QmpClient {
    if (!this.qmp) throw new LockstepError('not attached to our QEMU');
    return this.qmp;
  }

  /** What the procedures' steps need of this agent (procedures.ts). */
  private procedureHost(): ProcedureHost {
    return {
      config: this.c,
      name: this.name,
      pair: () => {
        this.reloadPair();
        return this.pair;
      },
      qmp: () => this.needQmp(),
      canPauseIntoColo: () => this.pauseIntoColo,
      mayRunAlone: () => mayBeginAlone(this.core),
      endOurQemu: (why) => this.endOurQemu(why),
      prepared: () => this.prepared,
      setPrepared: (p) => {
        this.prepared = p;
        // Started while we stop: nobody will use it.
        if (this.stopped) void this.dropPrepared().catch(() => undefined);
      },
      dropPrepared: () => this.dropPrepared(),
      checkPreparedInColo: async () => {
        const prep = this.prepared;
        if (!prep) throw new LockstepError('no new secondary here');
        const found = await describeQemu(prep.qmp).catch((err: unknown) => {
          throw new LockstepError(`the new secondary does not answer: ${errorMessage(err)}`);
        });
        if (found.colo !== 'secondary') throw new LockstepError(`the new secondary is not in COLO (${found.colo})`);
      },
      adoptPrepared: async () => {
        const prep = this.prepared;
        if (!prep) throw new LockstepError('no new secondary here');
        const found = await describeQemu(prep.qmp);
        const pause = await pausesIntoColo(prep.qmp);
        this.prepared = undefined;
        // Our own record knows our new QEMU before anything else happens (a restarted agent attaches by it).
        const sp = prep.plan.secondary;
        recordOwnQemu(this.c.stateDir, this.name, { pid: prep.proc.pid, role: 'secondary', disk: sp.disk, serialLog: sp.serialLog, qemuLog: sp.qemuLog });
        this.reloadPair();
        this.me = { ...this.me, pid: prep.proc.pid };
        this.pauseIntoColo = pause;
        this.own(prep.qmp);
        this.input({ t: 'qemu-found', found: { ...found, ...(await this.diskSize()) } });
        return prep.proc.pid;
      },
      attach: async () => {
        this.reloadPair();
        await this.attach();
      },
    };
  }

  /** Ends our own QEMU on purpose (no re-attach): a restart or a resync replaces it. */
  private async endOurQemu(why: string): Promise<void> {
    const old = this.qmp;
    this.qmp = undefined;
    old?.removeAllListeners('disconnect');
    old?.destroy();
    if (isOurQemu(this.me.pid, this.me.qmpSocket)) {
      this.log.warn({ pid: this.me.pid, why }, 'ending our QEMU');
      await stopPid(this.me.pid, this.me.qmpSocket, 1000);
    }
    if (old) this.input({ t: 'qemu-lost', processGone: true });
  }

  private async dropPrepared(): Promise<void> {
    const p = this.prepared;
    this.prepared = undefined;
    if (!p) return;
    p.qmp.destroy();
    await dropSecondary(p);
  }

  /** Our view of the pair from the state file, after a resync or restart changed it. */
  private reloadPair(): void {
    const s = readState(this.c.stateDir);
    const me = s?.nodes.find((n) => n.name === this.name);
    const peer = s?.nodes.find((n) => n.name !== this.name);
    if (!s || !me || !peer) return;
    this.pair = s;
    // Our QEMU's pid is ours to know: a resync target adopts its new secondary before the state file says so.
    this.me = { ...me, pid: this.me.pid === me.pid || !isOurQemu(this.me.pid, this.me.qmpSocket) ? me.pid : this.me.pid };
    this.peer = peer;
  }

  private record(event: Extract<Effect, { t: 'record' }>['event'], detail: Record<string, string | number | boolean | null>): void {
    this.log.warn({ event, ...detail }, `record: ${event}`);
    if (event === 'failover') {
      recordFailover(this.c.stateDir, { from: String(detail.from), to: String(detail.to), reason: String(detail.reason), ms: Number(detail.ms), ...(typeof detail.sinceCheckpointMs === 'number' ? { sinceCheckpointMs: detail.sinceCheckpointMs } : {}) });
      this.reloadPair();
    }
  }

  /** An operator asks for a resync now (lockstep resync NAME); the core decides whether and when, as for its own. */
  askResync(): void {
    this.input({ t: 'operator-resync' });
  }

  // ---- control socket (status) ----

  status(): AgentStatus {
    const s = readState(this.c.stateDir);
    return { ...statusOf(this.core), pid: process.pid, qemuPid: this.me.pid, lastFailover: s?.lastFailover ?? null };
  }

  private async startControl(): Promise<void> {
    const sock = agentSocket(this.dataDir);
    fs.rmSync(sock, { force: true });
    this.control = net.createServer((conn) => {
      conn.on('error', () => {});
      conn.end(JSON.stringify(this.status()) + '\n');
    });
    await new Promise<void>((r) => this.control!.listen(sock, r));
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.tick);
    this.driver?.stop();
    // A procedure under way may still start a new secondary (a resync's target): let it end first, within the time
    // the agent is given to stop (pair/agents.ts: SIGKILL after 3 s).
    if (this.running.size) await Promise.race([Promise.allSettled([...this.running]), sleep(STOP_PROCEDURES_WAIT_MS)]);
    // A new secondary nobody will use: it is in no state file, so nothing else would end it.
    await this.dropPrepared().catch(() => undefined);
    this.channel.close();
    this.control?.close();
    this.arbiter?.close();
    this.qmp?.removeAllListeners('disconnect');
    this.qmp?.destroy();
    this.log.info('agent stopped');
  }
}

/** How long stop() waits for procedures under way before it drops what they left. */
const STOP_PROCEDURES_WAIT_MS = 2000;

function notRunning(): QemuFound {
  return { running: false, colo: 'none', runState: 'other', replicationChild: false, secondaryFilters: false, resumeLeftovers: false, oob: false };
}

/** Whether a QEMU can pause before its switchover into COLO; a QEMU that does not say takes the documented order. */
async function pausesIntoColo(qmp: QmpClient): Promise<boolean> {
  return canPauseIntoColo(qmp).catch(() => false);
}

/** What our QEMU is: COLO mode, run state, and what is left of the COLO procedures on it. */
async function describeQemu(qmp: QmpClient): Promise<QemuFound> {
  const [colo, st, mig, jobs] = await Promise.all([
    queryColoStatus(qmp),
    qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 5000 }),
    qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: 5000 }).catch(() => ({ status: undefined })),
    qmp.execute<Array<{ device: string }>>('query-block-jobs', undefined, { timeoutMs: 5000 }).catch(() => []),
  ]);
  const mode = colo.mode === 'primary' || colo.mode === 'secondary' ? colo.mode : 'none';
  const migrating = mig.status !== undefined && !['completed', 'failed', 'cancelled', 'none', 'colo'].includes(mig.status);
  const runState = st.status === 'running' || st.status === 'colo' ? 'running' : st.status === 'paused' ? 'paused' : st.status === 'inmigrate' ? 'inmigrate' : 'other';
  return {
    running: true,
    colo: mode,
    runState,
    replicationChild: mode === 'none' && (await hasBlockNode(qmp, IDS.replicationNode)),
    secondaryFilters: mode === 'none' && (await hasObject(qmp, IDS.secRedirectorIn)),
    // A resync of ours stopped half-way: its mirror job, or its migration into COLO.
    resumeLeftovers: mode === 'none' && (jobs.some((j) => j.device === RESYNC_JOB) || migrating),
    oob: qmp.oobEnabled,
  };
}
