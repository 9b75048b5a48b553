/**
 * The simulated agent processes: the runtime's own driver (node/driver.ts)
 * around the real agent core, with an AgentIo that acts on the simulated
 * world instead of QMP, sockets and files. As agent.ts: the agent attaches to
 * its QEMU (retrying while its main loop does not answer; the core ends it
 * past attachBoundMs), ticks every TICK_MS of its host's clock, and a broken
 * invariant ends the process, which its supervisor starts again.
 */
import { initCore } from '../node/core/core.js';
import type { InputBody, QemuFound } from '../node/core/types.js';
import { AgentDriver, ATTACH_RETRY_MS, PROBE_TIMEOUT_MS, TICK_MS, type AgentIo } from '../node/driver.js';
import type { Arbiter } from '../node/arbiter.js';
import type { World, Host } from './world.js';
import type { SimQemu } from './qemu.js';
import type { NodeName } from './schedule-types.js';

/** A supervisor (systemd's Restart=) starts an agent that ended on its own logic again after this long. */
const SUPERVISOR_RESTART_MS = 1000;

export interface SimAgent {
  boot: string;
  /** Its event loop is blocked until then (agent.ts writes its disk record synchronously: a slow disk stalls it). */
  blockedUntil: number;
  driver: AgentDriver;
  /** The pid of the QEMU it is attached to. */
  attached: number | null;
  arbiter: Arbiter;
}

export class Agents {
  constructor(private readonly w: World) {}

  /** The agent's clock: its host's monotonic clock. */
  local(h: Host): number {
    return this.w.now * this.w.sched.clocks[h.name];
  }

  start(name: NodeName): void {
    const w = this.w;
    const h = w.hosts[name];
    const boot = w.rng.agent.hex(16);
    // What generation.json says; a missing or unreadable record is an unknown epoch (agent.ts, readDiskRecord).
    const rec = h.record;
    // And replica-note.json, if one was written (agent.ts, readReplicaNote).
    const note = h.replicaNote ? { note: h.replicaNote } : {};
    const disk = rec.state === 'ok' ? { epoch: rec.epoch, pending: rec.pending, ...note } : { epoch: undefined, pending: undefined, ...note };
    const core = initCore(w.setup.core[name], this.local(h), boot, disk);
    const ag: SimAgent = { boot, blockedUntil: 0, driver: undefined as unknown as AgentDriver, attached: null, arbiter: undefined as unknown as Arbiter };
    ag.arbiter = w.witness.arbiter(h, ag);
    ag.driver = new AgentDriver(core, this.io(h, ag), (err, invariant) => {
      w.check.violation(invariant ? 'core-invariant' : 'core-error', `${name}: ${(err as Error).message}`);
      // The process ends (exit 70); its supervisor starts it again.
      if (h.agent === ag) {
        this.kill(name, 'its own logic failed');
        w.after(SUPERVISOR_RESTART_MS, () => {
          if (h.up && !h.agent) this.start(name);
        });
      }
    });
    h.agent = ag;
    w.trace(`${name}: agent starts (${boot.slice(0, 8)})${rec.state === 'ok' ? '' : `, its disk record ${rec.state}`}`);
    w.after(w.rng.agent.range(20, 300), () => this.attach(h, ag));
    const tick = () => {
      if (h.agent !== ag) return;
      this.input(name, { t: 'tick' });
      // TICK_MS by its host's clock.
      w.after((TICK_MS + w.rng.agent.range(0, 3)) / w.sched.clocks[name], tick);
    };
    w.after(w.rng.agent.range(0, TICK_MS), tick);
  }

  /** Attaching needs QMP answered (its main loop): tried again until it answers, or the core ends it (attachBoundMs). */
  private attach(h: Host, ag: SimAgent): void {
    if (h.agent !== ag) return;
    if (h.paused) return void h.onResume.push(() => this.attach(h, ag));
    const q = h.qemu;
    if (q?.alive && !this.w.qemu.responsive(q, false)) return void this.w.after(ATTACH_RETRY_MS, () => this.attach(h, ag));
    if (q?.alive) ag.attached = q.pid;
    this.input(h.name, { t: 'qemu-found', found: this.found(q?.alive ? q : null) });
  }

  /** The runtime's view of a QEMU (agent.ts, describeQemu). */
  found(q: SimQemu | null): QemuFound {
    if (!q?.alive) return { running: false, colo: 'none', runState: 'other', replicationChild: false, secondaryFilters: false, resumeLeftovers: false, oob: true };
    return {
      running: true,
      colo: q.colo,
      // A migration's last pass: 'finish-migrate' ([live] in qemu.ts).
      runState: q.incoming ? 'inmigrate' : q.lastPass ? 'other' : q.paused ? 'paused' : 'running',
      replicationChild: q.colo === 'none' && q.replication !== 'none',
      secondaryFilters: q.colo === 'none' && q.objects.has('f1'),
      resumeLeftovers: q.colo === 'none' && (q.mirror !== null || q.migration === 'active' || q.migration === 'pre-switchover'),
      oob: true,
    };
  }

  kill(name: NodeName, why: string): void {
    const h = this.w.hosts[name];
    if (!h.agent) return;
    this.w.trace(`${name}: agent dies (${why})`);
    h.agent.driver.stop();
    h.agent = null;
  }

  /**
   * Feeds one input to a node's agent (through its driver); while its host is paused, when it resumes. `sentAtLocal`:
   * a QMP event's timestamp (the host's clock when QEMU sent it), from which the agent gets its age as it reads it.
   */
  input(name: NodeName, input: InputBody, sentAtLocal?: number): void {
    const h = this.w.hosts[name];
    const ag = h.agent;
    if (!ag) return;
    if (h.paused) return void h.onResume.push(() => h.agent === ag && this.input(name, input, sentAtLocal));
    if (this.w.now < ag.blockedUntil) return void this.w.at(ag.blockedUntil, () => h.agent === ag && this.input(name, input, sentAtLocal));
    this.w.steps++;
    ag.driver.input(input.t === 'qemu-event' && sentAtLocal !== undefined ? { ...input, ageMs: Math.max(0, this.local(h) - sentAtLocal) } : input);
    if (input.t === 'tick' && h.agent === ag) this.w.check.ticked(h);
  }

  private io(h: Host, ag: SimAgent): AgentIo {
    const w = this.w;
    const mine = () => h.agent === ag;
    return {
      now: () => this.local(h),
      channel: { send: (path, msg) => w.net.sendPeer(h, ag, path, msg) },
      arbiter: ag.arbiter,
      runProcedure: (id, p, fromStep) => w.procs.run(h, ag, id, p, fromStep),
      queryQemu: (id, oob) => {
        const q = h.qemu;
        if (!q?.alive || ag.attached !== q.pid) return;
        q.queries.push({ id, oob, boot: ag.boot });
        w.qemu.answerQueries(q);
      },
      killQemu: (why) => {
        // By its pid, attached or not (agent.ts: the pid in the pair's record).
        const q = h.qemu;
        if (q?.alive) w.qemu.end(q, true, `killed by its agent: ${why}`);
      },
      persistDisk: (id, epoch, pending, why) => {
        // Written synchronously (write, fsync, rename, fsync): the agent does nothing else meanwhile.
        const ms = w.rng.agent.range(1, 8) + (h.slowDisk !== null && w.now < h.slowDisk.until ? w.rng.agent.range(h.slowDisk.delayMs / 2, h.slowDisk.delayMs) : 0);
        ag.blockedUntil = Math.max(ag.blockedUntil, w.now + ms);
        w.after(ms, () => {
          // Written only if the host still runs (a power loss in between loses it).
          if (!h.up || !mine()) return;
          if (h.paused) return void h.onResume.push(() => mine() && this.input(h.name, { t: 'disk-persisted', id, ok: false, error: 'interrupted' }));
          if (w.faultsOn() && w.rng.agent.chance(w.sched.stepFailP / 4)) return this.input(h.name, { t: 'disk-persisted', id, ok: false, error: 'injected write error' });
          if (!epoch) return this.input(h.name, { t: 'disk-persisted', id, ok: false, error: 'no epoch to write' });
          h.record = { state: 'ok', epoch, pending };
          w.trace(`${h.name}: record ${epoch.gen}/${epoch.by}${pending ? ` (pending ${pending.gen}/${pending.by})` : ''}: ${why}`);
          this.input(h.name, { t: 'disk-persisted', id, ok: true });
        });
      },
      noteReplica: (note, why) => {
        // Written synchronously too, and nothing reported. A fixed time (no draw: the schedules' random streams stay
        // as they were), the slow disk's included; a power loss in between loses it.
        const ms = 4 + (h.slowDisk !== null && w.now < h.slowDisk.until ? h.slowDisk.delayMs * 0.75 : 0);
        ag.blockedUntil = Math.max(ag.blockedUntil, w.now + ms);
        const write = () => {
          if (!h.up || !mine()) return;
          if (h.paused) return void h.onResume.push(write);
          h.replicaNote = { ...note };
          w.trace(`${h.name}: replica note ${JSON.stringify(note)}: ${why}`);
        };
        w.after(ms, write);
      },
      probePeer: (id, what) => {
        const peer = w.hosts[h.peer];
        const pq = peer.qemu;
        // A host that runs answers a connect (an accept, or its kernel's refusal); a paused or powered-off one does
        // not, nor one we are cut off from. [freeze] a frozen QEMU's kernel still accepts the connection.
        const hostAnswers = peer.up && !peer.paused && w.net.up('replication');
        const alive = what === 'host' ? hostAnswers : hostAnswers && !!pq?.alive && pq.nbdServer;
        w.after(alive ? w.rng.agent.range(0.5, 3) : PROBE_TIMEOUT_MS, () => {
          if (mine()) this.input(h.name, { t: 'probe-result', id, alive });
        });
      },
      record: (event, detail) => w.trace(`${h.name}: record ${event} ${JSON.stringify(detail)}`),
      decision: (action, why) => {
        w.trace(`${h.name}: DECIDE ${action}: ${why}`);
        w.check.decided(h.name, action);
      },
      log: (level, msg) => {
        if (level !== 'info' || msg.startsWith('waiting')) w.trace(`${h.name}: ${level}: ${msg}`);
      },
    };
  }
}
