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
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import type { ResolvedConfig } from '../config/load.js';
import { QmpClient } from '../qmp/client.js';
import { isOurQemu } from '../qemu/process.js';
import { primaryFailover, yankLinksToSecondary } from '../colo/failover.js';
import { queryColoStatus } from '../colo/startup.js';
import { readState, recordFailover, type NodeState, type PairState } from '../pair/state.js';
import { secondaryTakeover } from '../pair/failover.js';
import { bumpGeneration } from '../pair/generation.js';
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
  private readonly pair: PairState;
  private readonly me: NodeState;
  private readonly peer: NodeState;
  private role: Role;
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
      if (st['last-mode'] === 'secondary' || st['last-mode'] === 'primary') this.coloExited = true;
      else if (st['last-mode'] === 'none' && this.role === 'primary') this.role = 'alone';
    }
    this.log.info({ colo: st, role: this.role }, 'attached to our QEMU');
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
    const msg: Message = { t: 'hb', seq, role: this.role, qemu: this.qemuAlive ? 'alive' : 'dead', colo: this.coloExited ? 'exited' : 'ok', hearsPeer: this.peerFresh() };
    for (const p of this.paths) p.link?.send(msg);
  }

  private onPeerMessage(p: PathState, m: Message): void {
    const now = performance.now();
    if (m.t === 'hb') {
      p.lastSeen = now;
      this.peerQemu = m.qemu === 'dead' ? 'dead' : 'alive';
      this.peerHearsUs = m.hearsPeer === true;
      p.link?.send({ t: 'hback', seq: m.seq });
      if (m.qemu === 'dead') void this.evaluate();
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
      const r = await this.witness.acquire(this.a.leaseMs, Math.min(500, this.a.leaseMs / 2));
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
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, 'failover step failed');
    } finally {
      this.busy = false;
    }
  }

  private async ensureLease(deadlineMs: number): Promise<boolean> {
    if (!this.witness) return true;
    if (this.leaseValid()) return true;
    const r = await this.witness.acquireBy(this.a.leaseMs, performance.now() + deadlineMs);
    if (r?.granted) {
      this.leaseUntil = r.validUntil!;
      return true;
    }
    this.log.warn({ holder: r?.holder ?? null }, 'could not get the lease');
    return false;
  }

  private async doPrimaryFailover(why: string): Promise<void> {
    const t0 = performance.now();
    this.log.warn({ why }, 'primary failover');
    if (!(await this.ensureLease(1000))) return this.fence('no lease for running alone');
    // Unless the secondary's QEMU is known dead or the stream already broke, its links may hang: yank them.
    const yank = !this.coloExited && this.peerQemu !== 'dead';
    const g = bumpGeneration(path.dirname(this.me.qmpSocket), `primary failover: ${why}`);
    this.log.warn({ generation: g.generation }, 'our disk starts a new generation');
    await primaryFailover(this.qmp!, (n) => this.log.info({ step: n }, 'primary failover step'), { yank });
    this.role = 'alone';
    recordFailover(this.c.stateDir, { from: this.peer.name, to: this.name, reason: `agent: ${why}`, ms: performance.now() - t0 });
    this.log.warn({ ms: Math.round(performance.now() - t0) }, 'running alone, unprotected');
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
    const g = bumpGeneration(path.dirname(this.me.qmpSocket), `takeover: ${why}`);
    this.log.warn({ generation: g.generation }, 'our disk starts a new generation');
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
    for (const p of this.paths) p.link?.close();
    for (const s of this.servers) s.close();
    this.control?.close();
    this.witness?.close();
    this.qmp?.destroy();
    this.log.info('agent stopped');
  }
}

