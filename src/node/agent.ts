/**
 * lockstep agent: one per node. It attaches to its node's QEMU over QMP (and
 * re-attaches after its own restart), keeps authenticated heartbeat links to
 * the peer agent over one or more paths, holds or asks for the witness lease,
 * and runs failover by itself when the failure detector says so:
 *
 * - the primary's VM died → the secondary takes the lease, joins the bridge
 *   (or takes the forwards over) and runs "Secondary Failover";
 * - the secondary's VM died → the primary runs "Primary Failover" and carries
 *   on unprotected;
 * - a node that may not proceed stops its VM (pauses it) instead of risking
 *   a second writer.
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
import { primaryFailover, yankLinksToSecondary } from '../colo/failover.js';
import { queryColoStatus } from '../colo/startup.js';
import { abortResume } from '../colo/resume.js';
import { readState, recordFailover, type NodeState, type PairState } from '../pair/state.js';
import { secondaryTakeover } from '../pair/failover.js';
import { readGeneration, writeGeneration } from '../pair/generation.js';
import { prepareSecondary, dropSecondary, resumeOnSurvivor, recordResync, type PreparedSecondary } from '../pair/resync.js';
import { restartAlone } from '../pair/restart.js';
import { planPair } from '../pair/plan.js';
import { imageInfo } from '../qemu/images.js';
import { agentSocket, type AgentStatus } from '../pair/agents.js';
import { listenLinks, connectLink, type Link, type Message } from './link.js';
import { WitnessClient } from './witness.js';
import { decide, type Decision, type Role } from './detector.js';
import { sleep } from '../util/time.js';
import { LockstepError, TimeoutError, errorMessage } from '../util/errors.js';

interface PathState {
  local: string;
  remote: string;
  link?: Link;
  lastSeen: number;
}

export class Agent {
  private readonly log: pino.Logger;
  /** The pair as `up` recorded it: endpoints, forwards, both nodes. */
  private pair: PairState;
  private me: NodeState;
  private peer: NodeState;
  private role: Role;
  /** Our disk's generation (generation.json), and the peer's as its heartbeats say. */
  private gen: number;
  /** The run of the pair our disk belongs to (generation.json). */
  private run: string;
  private peerGen: number | undefined;
  private peerRole: Role | undefined;
  /** This agent's run, so the peer can tell a restarted agent (whose heartbeat numbers start again) from old messages. */
  private readonly boot = crypto.randomUUID();
  private peerBoot: string | undefined;
  private peerSeq = 0;
  /** Replies awaited from the peer, by request id. */
  private readonly awaiting = new Map<string, (m: Message) => void>();
  /** Re-protection: no attempt before this time (backs off after failures). */
  private reprotectAt = 0;
  private reprotectFailures = 0;
  /** This failure's new generation is written (reset once protected again). */
  private generationRaised = false;
  /** Survivor: the resync under way, for status. */
  private resyncing: { since: number; step: string; mirror?: { offset: number; len: number } } | undefined;
  /** As a resync target: the new secondary waiting for the survivor's resume. */
  private joining: { prepared?: PreparedSecondary; timer?: NodeJS.Timeout } | undefined;
  private qmp: QmpClient | undefined;
  private qemuAlive = false;
  private coloExited = false;
  private coloExitAt = 0;
  private readonly paths: PathState[];
  private peerQemu: 'alive' | 'dead' | 'unknown' = 'unknown';
  private peerHearsUs = false;
  private rttMs: number | null = null;
  private seq = 0;
  private readonly sent = new Map<number, number>();
  private readonly witness: WitnessClient | undefined;
  private leaseUntil = 0;
  /** When our QEMU last resumed after a checkpoint (or when we attached). */
  private lastCheckpointAt = performance.now();
  /** No stall-triggered takeover attempt before this time (backs off while the primary holds the lease). */
  private stallRetryAt = 0;
  private busy = false;
  private stopped = false;
  private probe: { at: number; result: 'alive' | 'dead' } | undefined;
  private lastDecision: string | null = null;
  private readonly servers: net.Server[] = [];
  private control: net.Server | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly a: NonNullable<ResolvedConfig['agents']>;

  constructor(
    private readonly c: ResolvedConfig,
    readonly name: string,
    logStream: pino.DestinationStream = process.stdout,
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
    this.role = me.role;
    const g = readGeneration(path.dirname(me.qmpSocket));
    this.gen = g.generation;
    this.run = g.pair;
    const mine = this.a.links?.[me.name] ?? [me.address];
    const theirs = this.a.links?.[peer.name] ?? [peer.address];
    this.paths = mine.slice(0, theirs.length).map((local, i) => ({ local, remote: theirs[i]!, lastSeen: 0 }));
    if (this.a.witness) {
      const [host, port] = this.a.witness.split(':');
      this.witness = new WitnessClient({ name, secret: this.a.secret, host: host!, port: Number(port) });
    }
  }

  async start(): Promise<void> {
    await this.attachQemu();
    for (const p of this.paths) {
      this.servers.push(
        await listenLinks({
          name: this.name,
          secret: this.a.secret,
          host: p.local,
          port: this.a.port,
          onLink: (l) => this.adopt(p, l),
          onReject: (remote, why) => this.log.warn({ remote, why }, 'rejected a connection'),
        }),
      );
    }
    // One connection per path: the node with the smaller name dials.
    if (this.name < this.peer.name) for (const p of this.paths) void this.dial(p);
    await this.startControl();
    const hb = this.a.heartbeatIntervalMs;
    this.timers.push(setInterval(() => this.heartbeat(), hb));
    this.timers.push(setInterval(() => void this.evaluate(), Math.max(10, hb / 2)));
    this.timers.push(setInterval(() => void this.watchQemu(), 500));
    if (this.witness) {
      this.timers.push(setInterval(() => void this.renewLease(), Math.max(50, this.a.leaseMs / 4)));
      void this.renewLease();
    }
    this.log.info({ role: this.role, paths: this.paths.map((p) => `${p.local}→${p.remote}`), witness: this.a.witness ?? null }, 'agent started');
  }

  // ---- QEMU ----

  private async attachQemu(): Promise<void> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (!isOurQemu(this.me.pid, this.me.qmpSocket)) {
        this.qemuAlive = false;
        this.log.warn({ pid: this.me.pid }, 'our QEMU is not running');
        return;
      }
      try {
        this.qmp = await QmpClient.connect(this.me.qmpSocket, { timeoutMs: 3000 });
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(200);
      }
    }
    this.qemuAlive = true;
    const qmp = this.qmp;
    qmp.on('event', (e) => {
      if (e.event === 'RESUME') this.lastCheckpointAt = performance.now();
      if (e.event === 'COLO_EXIT') {
        if (!this.coloExited) this.coloExitAt = performance.now();
        this.coloExited = true;
        this.log.warn({ data: e.data }, 'COLO_EXIT');
        void this.evaluate();
      }
    });
    qmp.on('disconnect', () => {
      if (this.stopped) return;
      this.qemuAlive = isOurQemu(this.me.pid, this.me.qmpSocket);
      if (!this.qemuAlive) this.role = 'down';
      this.log.error({ qemuAlive: this.qemuAlive }, 'lost the QMP connection to our QEMU');
      this.heartbeat(); // tell the peer at once
      if (!this.qemuAlive && this.witness && this.leaseUntil > performance.now()) {
        // Our VM is gone: let the survivor have the lease now rather than when it runs out.
        this.leaseUntil = 0;
        void this.witness.release();
      }
      if (this.qemuAlive) void this.reattach();
    });
    // Re-attached after our own restart: learn where COLO stands.
    const st = await queryColoStatus(qmp);
    if (st.mode === 'none' && (this.role === 'primary' || this.role === 'secondary')) {
      // Out of COLO: either the failover procedure already ran (it removes the replication child on a
      // primary, the redirectors on a secondary) and the VM runs alone, or COLO broke and it is still to run.
      if (await this.failoverDone(qmp)) this.role = 'alone';
      else this.coloExited = true;
    }
    if (this.role === 'alone') {
      // A resync this agent was running when it died may have left a mirror job, half the proxy, or a stopped VM.
      const undone = await abortResume(qmp);
      // (x-colo stays on after any failover; only the rest tells of a resync.)
      if (undone.some((u) => u !== 'x-colo off')) this.log.warn({ undone }, 'took back a resync left half-done');
    }
    this.log.info({ colo: st, role: this.role }, 'attached to our QEMU');
  }

  /** Whether this QEMU, out of COLO, has been through its failover procedure already. */
  private async failoverDone(qmp: QmpClient): Promise<boolean> {
    if (this.role === 'primary') {
      const nodes = await qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes');
      return !nodes.some((n) => n['node-name'] === IDS.replicationNode);
    }
    const objects = await qmp.execute<Array<{ name: string }>>('qom-list', { path: '/objects' });
    return !objects.some((o) => o.name === IDS.secRedirectorIn);
  }

  private async reattach(): Promise<void> {
    await sleep(200);
    if (this.stopped || this.qmp?.state === 'running') return;
    try {
      await this.attachQemu();
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, 'cannot re-attach to our QEMU');
    }
  }

  // ---- peer links and heartbeats ----

  private async dial(p: PathState): Promise<void> {
    while (!this.stopped) {
      if (!p.link?.isOpen) {
        try {
          const l = await connectLink({ name: this.name, secret: this.a.secret, host: p.remote, port: this.a.port, localAddress: p.local, timeoutMs: 1000 });
          this.adopt(p, l);
        } catch (err) {
          this.log.debug({ path: `${p.local}→${p.remote}`, err: errorMessage(err) }, 'peer not reachable');
        }
      }
      await sleep(Math.max(100, this.a.heartbeatIntervalMs * 2));
    }
  }

  private adopt(p: PathState, l: Link): void {
    if (l.peer !== this.peer.name) {
      this.log.warn({ claimed: l.peer }, 'rejected an authenticated link from a node that is not our peer');
      l.close();
      return;
    }
    p.link?.close();
    p.link = l;
    this.log.info({ path: `${p.local}→${p.remote}` }, 'peer link up');
    l.on('message', (m) => this.onPeerMessage(p, m));
    l.on('close', () => this.log.info({ path: `${p.local}→${p.remote}` }, 'peer link down'));
  }

  private heartbeat(): void {
    const seq = ++this.seq;
    const now = performance.now();
    this.sent.set(seq, now);
    if (this.sent.size > 100) this.sent.delete(seq - 100);
    const msg: Message = {
      t: 'hb',
      seq,
      boot: this.boot,
      role: this.role,
      qemu: this.qemuAlive ? 'alive' : 'dead',
      colo: this.coloExited ? 'exited' : 'ok',
      hearsPeer: this.peerFresh(),
      gen: this.gen,
      run: this.run,
    };
    for (const p of this.paths) p.link?.send(msg);
  }

  private onPeerMessage(p: PathState, m: Message): void {
    const now = performance.now();
    if (m.t === 'hb') {
      p.lastSeen = now;
      p.link?.send({ t: 'hback', seq: m.seq });
      if (m.boot !== this.peerBoot) {
        this.peerBoot = String(m.boot);
        this.peerSeq = 0;
      }
      // Over several paths heartbeats can overtake each other: only the newest says how things are.
      if (Number(m.seq) <= this.peerSeq) return;
      this.peerSeq = Number(m.seq);
      this.peerQemu = m.qemu === 'dead' ? 'dead' : 'alive';
      this.peerHearsUs = m.hearsPeer === true;
      this.peerRole = m.role as Role;
      // A disk of another run of the pair (an earlier `up`) is older than any of this run.
      this.peerGen = typeof m.gen !== 'number' ? undefined : m.run === this.run ? m.gen : 0;
      if (m.qemu === 'dead') void this.evaluate();
    } else if (m.t === 'resync-prepare') {
      void this.onResyncPrepare(m);
    } else if (m.t === 'resync-done') {
      void this.onResyncDone(m);
    } else if (m.t === 'resync-abort') {
      void this.onResyncAbort('the survivor gave the resync up');
    } else if (typeof m.re === 'string' && this.awaiting.has(m.re)) {
      this.awaiting.get(m.re)!(m);
    } else if (m.t === 'hback') {
      const sent = this.sent.get(Number(m.seq));
      if (sent !== undefined) this.rttMs = now - sent;
    }
  }

  private readonly startedAt = performance.now();

  /** Until the first heartbeat and the first lease answer could have arrived, their absence is no evidence. */
  private starting(): boolean {
    return performance.now() - this.startedAt < Math.max(2 * this.a.heartbeatTimeoutMs, this.a.leaseMs) + 1000;
  }

  private peerFresh(): boolean {
    const now = performance.now();
    if (this.paths.every((p) => p.lastSeen === 0) && this.starting()) return true;
    return this.paths.some((p) => now - p.lastSeen < this.a.heartbeatTimeoutMs);
  }

  // ---- lease ----

  private async renewLease(): Promise<void> {
    if (!this.witness || !(this.role === 'primary' || this.role === 'alone') || !this.qemuAlive) return;
    try {
      const r = await this.witness.acquire(this.a.leaseMs, Math.min(500, this.a.leaseMs / 2), { run: this.run, gen: this.gen });
      if (r.granted) this.leaseUntil = r.validUntil!;
      else this.log.warn({ holder: r.holder, reason: r.reason }, 'lease renewal refused');
    } catch (err) {
      this.log.debug({ err: errorMessage(err) }, 'witness unreachable');
    }
  }

  private leaseValid(): boolean {
    return this.leaseUntil > performance.now();
  }

  // ---- our QEMU's watchdog ----

  /** How long our QEMU may leave a query unanswered before it counts as hung (a checkpoint holds it ~0.1 s). */
  private hungMs(): number {
    return Math.max(3000, 3 * this.a.heartbeatTimeoutMs);
  }

  private watching = false;

  /**
   * A QEMU that no longer answers (frozen, stuck) is still a process, so
   * neither the peer nor QEMU's own events would ever call it dead, and the
   * pair would stand still. Such a QEMU is ended (it may never come back as a
   * second writer); from there the normal paths take over: its lease is
   * released, the peer hears "dead" and fails over.
   */
  private async watchQemu(): Promise<void> {
    const qmp = this.qmp;
    if (this.watching || this.stopped || !this.qemuAlive || !qmp || qmp.state !== 'running') return;
    if (this.role === 'fenced' || this.role === 'down') return;
    this.watching = true;
    try {
      await qmp.execute('query-status', undefined, { timeoutMs: this.hungMs() });
    } catch (err) {
      if (err instanceof TimeoutError && !this.stopped && isOurQemu(this.me.pid, this.me.qmpSocket)) {
        this.log.error({ pid: this.me.pid, ms: this.hungMs() }, 'our QEMU stopped answering: ending it so that it can never come back as a second writer');
        this.lastDecision = `${new Date().toISOString()} end our QEMU: it did not answer for ${this.hungMs()} ms`;
        process.kill(this.me.pid, 'SIGKILL');
      }
    } finally {
      this.watching = false;
    }
  }

  // ---- the detector and the procedures ----

  private async probeSecondary(): Promise<'alive' | 'dead'> {
    const now = performance.now();
    if (this.probe && now - this.probe.at < 1000) return this.probe.result;
    const port = this.pair.endpoints.nbdPort;
    const result = await new Promise<'alive' | 'dead'>((resolve) => {
      const sock = net.createConnection({ host: this.peer.address, port, localAddress: this.me.address, timeout: 300 });
      sock.once('connect', () => {
        sock.destroy();
        resolve('alive');
      });
      sock.once('timeout', () => {
        sock.destroy();
        resolve('dead');
      });
      sock.once('error', () => resolve('dead'));
    });
    this.probe = { at: performance.now(), result };
    return result;
  }

  private async evaluate(): Promise<void> {
    if (this.busy || this.stopped) return;
    this.busy = true;
    try {
      let obs = {
        role: this.role,
        qemuAlive: this.qemuAlive,
        coloExited: this.coloExited,
        coloExitAgeMs: this.coloExited ? performance.now() - this.coloExitAt : undefined,
        settleMs: this.a.heartbeatTimeoutMs,
        peerFresh: this.peerFresh(),
        peerQemu: this.peerQemu,
        peerHearsUs: this.peerHearsUs,
        witness: this.witness !== undefined,
        leaseValid: this.leaseValid(),
        starting: this.starting(),
        checkpointAgeMs: this.role === 'secondary' ? performance.now() - this.lastCheckpointAt : undefined,
        stallMs: this.stallMs(),
        peerRole: this.peerRole,
        generation: this.gen,
        peerGeneration: this.peerGen,
        reprotect: this.a.reprotect && performance.now() >= this.reprotectAt,
        restart: this.a.reprotect && !this.joining && performance.now() >= this.reprotectAt,
        tieBreakFirst: this.name < this.peer.name,
      } as Parameters<typeof decide>[0];
      let d: Decision = decide(obs);
      if (d.action === 'probe') {
        obs = { ...obs, probe: await this.probeSecondary() };
        d = decide(obs);
      }
      if (d.action !== 'none') this.lastDecision = `${new Date().toISOString()} ${d.action}: ${d.why}`;
      if (d.action === 'primary-failover') await this.doPrimaryFailover(d.why);
      else if (d.action === 'takeover') await this.doTakeover(d.why);
      else if (d.action === 'fence') await this.fence(d.why);
      else if (d.action === 'reprotect') await this.doReprotect(d.why);
      else if (d.action === 'restart') await this.doRestart(d.why);
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, 'failover step failed');
    } finally {
      this.busy = false;
    }
  }

  private async ensureLease(deadlineMs: number): Promise<boolean> {
    if (!this.witness) return true;
    if (this.leaseValid()) return true;
    const r = await this.witness.acquireBy(this.a.leaseMs, performance.now() + deadlineMs, { run: this.run, gen: this.gen });
    if (r?.granted) {
      this.leaseUntil = r.validUntil!;
      return true;
    }
    this.log.warn({ holder: r?.holder ?? null, reason: r?.reason ?? null }, 'could not get the lease');
    return false;
  }

  private async doPrimaryFailover(why: string): Promise<void> {
    const t0 = performance.now();
    this.log.warn({ why }, 'primary failover');
    if (!(await this.ensureLease(1000))) return this.fence('no lease for running alone');
    // Unless the secondary's QEMU is known dead or the stream already broke, its links may hang: yank them.
    const yank = !this.coloExited && this.peerQemu !== 'dead';
    if (!(await this.newGeneration(`primary failover: ${why}`))) return this.fence('could not record a new disk generation at the witness');
    await primaryFailover(this.qmp!, (n) => this.log.info({ step: n }, 'primary failover step'), { yank });
    this.role = 'alone';
    recordFailover(this.c.stateDir, { from: this.peer.name, to: this.name, reason: `agent: ${why}`, ms: performance.now() - t0 });
    this.log.warn({ ms: Math.round(performance.now() - t0) }, 'running alone, unprotected');
  }

  /**
   * Before this node writes alone: its disk starts a new generation, once
   * per failure (a failover step that fails and is tried again does not
   * raise it again).
   */
  private async newGeneration(why: string): Promise<boolean> {
    if (this.generationRaised) return true;
    const next = this.gen + 1;
    if (this.witness) {
      // The witness records it first: from then on the other node's older disk gets no lease.
      const r = await this.witness.acquire(this.a.leaseMs, 1000, { run: this.run, gen: next }).catch(() => undefined);
      if (!r?.granted) {
        this.log.error({ generation: next, reason: r?.reason ?? 'witness unreachable' }, 'the witness did not record our new generation');
        return false;
      }
      this.leaseUntil = r.validUntil!;
    }
    this.gen = writeGeneration(path.dirname(this.me.qmpSocket), next, why).generation;
    this.generationRaised = true;
    this.log.warn({ generation: next }, 'our disk starts a new generation');
    return true;
  }

  /**
   * The longest gap between two checkpoints that is still normal: the
   * periodic interval, a checkpoint's own time, and the heartbeat timeout.
   */
  private stallMs(): number {
    return 2 * this.c.replication.checkpointDelayMs + this.a.heartbeatTimeoutMs + 1000;
  }

  private async doTakeover(why: string): Promise<void> {
    const t0 = performance.now();
    // The stream stalled (a partition, or a primary host gone without a reset) rather than broke:
    // our VM is no writer while it stays in COLO, so without the lease it stays, and asks again later.
    const stalled = !this.coloExited;
    if (stalled && performance.now() < this.stallRetryAt) return;
    this.log.warn({ why }, stalled ? 'checkpoints stalled: asking the witness' : 'taking over');
    // The primary's lease must have run out (or been released) first.
    if (!(await this.ensureLease(this.a.leaseMs + 1500))) {
      if (!stalled) return this.fence('the primary still holds the lease');
      this.stallRetryAt = performance.now() + 2 * this.a.leaseMs;
      this.log.warn('the primary still holds the lease: staying secondary');
      return;
    }
    if (!(await this.newGeneration(`takeover: ${why}`))) {
      if (!stalled) return this.fence('could not record a new disk generation at the witness');
      this.stallRetryAt = performance.now() + 2 * this.a.leaseMs;
      return;
    }
    await secondaryTakeover(this.qmp!, this.pair, this.me, this.peer, (n) => this.log.info({ step: n }, 'secondary failover step'), { yank: stalled });
    this.role = 'alone';
    recordFailover(this.c.stateDir, { from: this.peer.name, to: this.name, reason: `agent: ${why}`, ms: performance.now() - t0 });
    this.log.warn({ ms: Math.round(performance.now() - t0) }, 'took over: running alone, unprotected');
  }

  private async fence(why: string): Promise<void> {
    if (this.role === 'fenced') return;
    this.log.error({ why }, 'fencing: stopping our VM so that it cannot be a second writer');
    if (this.qmp && this.role === 'primary' && !this.coloExited) {
      // A write to the vanished secondary may hold QEMU's main loop, and `stop` with it.
      const yanked = await yankLinksToSecondary(this.qmp).catch(() => []);
      this.log.warn({ yanked }, 'yanked the links to the secondary');
    }
    await this.qmp?.execute('stop').catch((err: unknown) => this.log.error({ err: errorMessage(err) }, 'stop failed'));
    this.role = 'fenced';
  }

  // ---- re-protection ----

  /** Sends to the peer on the first open path. */
  private sendPeer(m: Message): boolean {
    return this.paths.some((p) => p.link?.isOpen && p.link.send(m));
  }

  /** Sends a request to the peer and waits for the message that answers it (re: id). */
  private request(m: Message, timeoutMs: number): Promise<Message> {
    const id = crypto.randomUUID();
    return new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.awaiting.delete(id);
        reject(new TimeoutError(`the peer's answer to ${m.t}`, timeoutMs));
      }, timeoutMs);
      this.awaiting.set(id, (reply) => {
        clearTimeout(timer);
        this.awaiting.delete(id);
        resolve(reply);
      });
      if (!this.sendPeer({ ...m, id })) {
        clearTimeout(timer);
        this.awaiting.delete(id);
        reject(new LockstepError(`no open link to ${this.peer.name}`));
      }
    });
  }

  /** Our view of the pair from the state file, after a resync changed it. */
  private reloadPair(): void {
    const s = readState(this.c.stateDir);
    const me = s?.nodes.find((n) => n.name === this.name);
    const peer = s?.nodes.find((n) => n.name !== this.name);
    if (!s || !me || !peer) return;
    this.pair = s;
    this.me = me;
    this.peer = peer;
  }

  /**
   * Survivor: have the peer start a new secondary, resume replication
   * towards it, and record the pair as protected again. Any failure leaves
   * our VM running alone (the half-done resume is taken back) and backs off.
   */
  private async doReprotect(why: string): Promise<void> {
    const t0 = performance.now();
    this.log.warn({ why }, 're-protecting: resync of the peer as our new secondary');
    const plan = planPair(this.c, this.pair.runtime, this.name);
    this.resyncing = { since: t0, step: `asking ${this.peer.name} for a new secondary` };
    try {
      const size = (await imageInfo(this.me.disk))['virtual-size'];
      const ready = await this.request({ t: 'resync-prepare', primary: this.name, gen: this.gen, run: this.run, size }, 30_000);
      if (ready.t !== 'resync-ready') throw new LockstepError(`${this.peer.name} could not start a new secondary: ${String(ready.why)}`);
      this.log.info({ pid: ready.pid, ms: Math.round(performance.now() - t0) }, 'the new secondary waits: mirroring our disk to it');
      let lastPct = -1;
      const r = await resumeOnSurvivor(this.c, this.qmp!, plan, {
        onUpdate: (n) => {
          this.resyncing = { ...this.resyncing!, step: n };
          this.log.info({ step: n }, 'resume replication step');
        },
        onMirror: (m) => {
          this.resyncing = { ...this.resyncing!, mirror: { offset: m.offset, len: m.len } };
          const pct = Math.floor((100 * m.offset) / Math.max(1, m.len) / 10) * 10;
          if (pct !== lastPct) this.log.info({ offset: m.offset, len: m.len }, `mirror ${pct}%`);
          lastPct = pct;
        },
      });
      const ms = performance.now() - t0;
      recordResync(this.c, plan, Number(ready.pid), { ms, mirrorMs: r.mirrorMs, mirrorBytes: r.mirrorBytes, stoppedMs: r.stoppedMs });
      this.reloadPair();
      this.role = 'primary';
      this.coloExited = false;
      this.lastCheckpointAt = performance.now();
      this.reprotectFailures = 0;
      this.generationRaised = false;
      // The peer attaches to its new QEMU; its answer says it is a secondary with a live QEMU, so older heartbeats do not count.
      const attached = await this.request({ t: 'resync-done', gen: this.gen, run: this.run }, 15_000).catch((err: unknown) => ({ t: 'resync-failed', why: errorMessage(err) }) as Message);
      if (attached.t === 'resync-attached') {
        this.peerSeq = Math.max(this.peerSeq, Number(attached.seq));
        this.peerRole = 'secondary';
        this.peerQemu = 'alive';
      } else this.log.error({ why: attached.why }, 'the new secondary\'s agent did not attach to it');
      this.log.warn({ ms: Math.round(ms), mirrorMs: Math.round(r.mirrorMs), mirrorBytes: r.mirrorBytes, stoppedMs: Math.round(r.stoppedMs) }, 'protected again');
    } catch (err) {
      this.sendPeer({ t: 'resync-abort' });
      this.backOff(this.qemuAlive ? 'resync failed: running on alone' : 'resync failed: our QEMU is gone', err);
    } finally {
      this.resyncing = undefined;
    }
  }

  private backOff(what: string, err: unknown): void {
    this.reprotectFailures++;
    const backoff = Math.min(60_000, 2000 * 2 ** (this.reprotectFailures - 1));
    this.reprotectAt = performance.now() + backoff;
    this.log.error({ err: errorMessage(err), retryInMs: backoff }, what);
  }

  /** The whole pair is down and our disk is the newest: start the VM alone from it. */
  private async doRestart(why: string): Promise<void> {
    this.log.warn({ why }, 'restarting the VM alone from our disk');
    try {
      if (!(await this.ensureLease(2000))) throw new LockstepError('no lease');
      // From now on only this disk is written: a new generation, recorded at the witness first.
      this.generationRaised = false;
      if (!(await this.newGeneration(`restart: ${why}`))) throw new LockstepError('the witness did not record our new generation');
      const s = readState(this.c.stateDir) ?? this.pair;
      await restartAlone(this.c, s, this.name, (m) => this.log.info({ step: m }, 'restart step'));
      this.reloadPair();
      this.role = 'alone';
      this.coloExited = false;
      await this.attachQemu();
      this.reprotectFailures = 0;
      this.log.warn({ pid: this.me.pid }, 'the VM runs again, alone, unprotected');
    } catch (err) {
      this.backOff('restart failed', err);
    }
  }

  /** Target: start a new secondary for the survivor, if our disk is not newer than its. */
  private async onResyncPrepare(m: Message): Promise<void> {
    const reply = (x: Message) => this.sendPeer({ ...x, re: m.id });
    // A new request from the survivor voids an earlier attempt (its agent may have restarted since).
    if (this.joining?.prepared) await this.onResyncAbort('the survivor started over');
    if (this.joining || !(this.role === 'down' || this.role === 'fenced')) return void reply({ t: 'resync-failed', why: `${this.name} is ${this.joining ? 'already joining' : this.role}` });
    const theirs = Number(m.gen);
    if (m.run === this.run && !(theirs >= this.gen)) {
      this.log.error({ ours: this.gen, theirs }, 'refusing to be resynced: our disk is newer than the survivor\'s');
      return void reply({ t: 'resync-failed', why: `the disk of ${this.name} has generation ${this.gen}, newer than ${theirs}` });
    }
    this.joining = {};
    try {
      if (isOurQemu(this.me.pid, this.me.qmpSocket)) {
        this.log.warn({ pid: this.me.pid }, 'ending our stale QEMU: its disk is replaced by the resync');
        const old = this.qmp;
        this.qmp = undefined;
        // Not a QEMU lost by accident: no re-attaching to it.
        old?.removeAllListeners('disconnect');
        old?.destroy();
        await stopPid(this.me.pid, this.me.qmpSocket, 1000);
      }
      this.qemuAlive = false;
      this.role = 'down';
      const s = readState(this.c.stateDir) ?? this.pair;
      const prepared = await prepareSecondary(this.c, s, String(m.primary), Number(m.size), (x) => this.log.info({ step: x }, 'new secondary'));
      // Given up if the survivor does not come back (it died, or the link did).
      const timer = setTimeout(() => void this.onResyncAbort('no word from the survivor'), this.c.replication.resyncTimeoutMs + 120_000);
      this.joining = { prepared, timer };
      reply({ t: 'resync-ready', pid: prepared.proc.pid });
    } catch (err) {
      this.joining = undefined;
      this.log.error({ err: errorMessage(err) }, 'could not start a new secondary');
      reply({ t: 'resync-failed', why: errorMessage(err) });
    }
  }

  /** Target: the survivor is in COLO with our new QEMU: own it from now on. */
  private async onResyncDone(m: Message): Promise<void> {
    const j = this.joining;
    const reply = (x: Message) => this.sendPeer({ ...x, re: m.id });
    if (!j?.prepared) return void reply({ t: 'resync-failed', why: 'no new secondary here' });
    clearTimeout(j.timer);
    j.prepared.qmp.destroy();
    const g = writeGeneration(path.dirname(this.me.qmpSocket), Number(m.gen), `resync from ${this.peer.name}`, String(m.run));
    this.gen = g.generation;
    this.run = g.pair;
    this.reloadPair();
    this.me = { ...this.me, pid: j.prepared.proc.pid };
    this.role = 'secondary';
    this.coloExited = false;
    this.lastCheckpointAt = performance.now();
    this.joining = undefined;
    this.generationRaised = false;
    try {
      await this.attachQemu();
      this.heartbeat();
      reply({ t: 'resync-attached', seq: this.seq });
      this.log.warn({ pid: this.me.pid, generation: this.gen }, 'resynced: secondary again');
    } catch (err) {
      reply({ t: 'resync-failed', why: errorMessage(err) });
    }
  }

  /** Target: the resync was given up: end the new secondary. */
  private async onResyncAbort(why: string): Promise<void> {
    const j = this.joining;
    if (!j) return;
    this.joining = undefined;
    clearTimeout(j.timer);
    if (j.prepared) {
      j.prepared.qmp.destroy();
      await dropSecondary(j.prepared);
    }
    this.log.warn({ why }, 'resync given up: new secondary ended');
  }

  // ---- control socket ----

  status(): AgentStatus {
    const now = performance.now();
    const s = readState(this.c.stateDir);
    return {
      node: this.name,
      role: this.role,
      pid: process.pid,
      qemu: { pid: this.me.pid, alive: this.qemuAlive, coloExited: this.coloExited },
      peer: {
        name: this.peer.name,
        lastSeenMs: Object.fromEntries(this.paths.map((p) => [`${p.local}→${p.remote}`, p.lastSeen ? Math.round(now - p.lastSeen) : null])),
        rttMs: this.rttMs === null ? null : Math.round(this.rttMs * 100) / 100,
        qemu: this.peerQemu,
        hearsUs: this.peerHearsUs,
      },
      lease: { witness: this.a.witness ?? null, held: this.leaseValid(), remainingMs: this.leaseValid() ? Math.round(this.leaseUntil - now) : null },
      lastDecision: this.lastDecision,
      generation: this.gen,
      resync: this.resyncing
        ? { to: this.peer.name, step: this.resyncing.step, runningMs: Math.round(now - this.resyncing.since), mirror: this.resyncing.mirror }
        : null,
      lastFailover: s?.lastFailover ?? null,
    };
  }

  private async startControl(): Promise<void> {
    const sock = agentSocket(path.dirname(this.me.qmpSocket));
    fs.rmSync(sock, { force: true });
    this.control = net.createServer((c) => c.end(JSON.stringify(this.status()) + '\n'));
    await new Promise<void>((r) => this.control!.listen(sock, r));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    // A new secondary nobody will use: it is not in the pair's state, so nothing else would end it.
    await this.onResyncAbort('the agent stops');
    for (const p of this.paths) p.link?.close();
    for (const s of this.servers) s.close();
    this.control?.close();
    this.witness?.close();
    this.qmp?.destroy();
    this.log.info('agent stopped');
  }
}

