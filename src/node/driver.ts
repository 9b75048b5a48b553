/**
 * The agent driver: the one loop around the agent core that both the agent
 * runtime (agent.ts) and the simulator (../sim/) run. It feeds the core one
 * input at a time, with the time, and turns each effect into a call on the
 * driver's I/O (AgentIo); whatever the I/O learns comes back through
 * `input`. The driver decides nothing (core/core.ts does) and does no I/O of
 * its own (the AgentIo does), so the simulator exercises exactly this code
 * between the core and the world.
 *
 * Inputs that arrive while an input is being stepped (an effect whose I/O
 * answers at once) wait their turn in a bounded inbox: the core always sees
 * one input at a time, in order.
 */
import type { Arbiter } from './arbiter.js';
import type { PeerChannel } from './peer-channel.js';
import { step, InvariantError } from './core/core.js';
import type { CoreState, Effect, Input, InputBody, Procedure, ProbeWhat, ReplicaNote } from './core/types.js';
import type { Epoch } from '../pair/epoch.js';

/** The core is stepped this often (heartbeats, timeouts and the watchdog are counted in its ticks). */
export const TICK_MS = 50;
/** Inputs waiting to be stepped; more means the core cannot keep up (it never should). */
export const INBOX_MAX = 10_000;
/** The runtime tries again to attach to its QEMU this often (until the core ends a QEMU that never answers). */
export const ATTACH_RETRY_MS = 500;
/** The probe's bound is part of the core's contract with its I/O (core/types.ts). */
export { PROBE_TIMEOUT_MS } from './core/types.js';

/** What the driver does the core's effects with. Every call returns at once; outcomes come back as inputs. */
export interface AgentIo {
  /** Monotonic ms: the core's clock. */
  now(): number;
  /** The peer agent's channel (peer-channel.ts). */
  readonly channel: Pick<PeerChannel, 'send'>;
  /** Who grants the VM's writer lease, when the pair has a witness (arbiter.ts). */
  readonly arbiter: Arbiter | undefined;
  /** Runs a procedure (procedures.ts) from `fromStep`; reports proc-progress, then proc-done or proc-failed. */
  runProcedure(id: string, procedure: Procedure, fromStep: number): void;
  /** Asks our QEMU (in band, or out of band); reports qemu-answer when it answers. */
  queryQemu(id: string, oob: boolean): void;
  /** Ends our QEMU (SIGKILL), attached or not. */
  killQemu(why: string): void;
  /** Writes our disk's record durably; reports disk-persisted. */
  persistDisk(id: string, epoch: Epoch | undefined, pending: Epoch | undefined, why: string): void;
  /** Writes the note of what our disk lacks (ReplicaNote) durably; reports nothing (a failure is logged). */
  noteReplica(note: ReplicaNote, why: string): void;
  /** Does the peer's QEMU (its NBD port), or its host, answer? Reports probe-result within PROBE_TIMEOUT_MS. */
  probePeer(id: string, what: ProbeWhat): void;
  /** For the pair's record (state file) and the event journal. */
  record(event: Extract<Effect, { t: 'record' }>['event'], detail: Extract<Effect, { t: 'record' }>['detail']): void;
  /** Every decision, with its reason. */
  decision(action: string, why: string): void;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
  /** After each input's effects were carried out: who watches the agent (metrics, journal, dashboard); no say in anything. */
  stepped?(input: Input, effects: readonly Effect[], core: CoreState): void;
}

export class AgentDriver {
  private readonly inbox: InputBody[] = [];
  private stepping = false;
  private stopped = false;

  constructor(
    /** The core's state, after every input. */
    public core: CoreState,
    private readonly io: AgentIo,
    /** The core's own logic failed (a broken invariant, a bug): the driver takes no more input. */
    private readonly onFatal: (err: unknown, invariant: boolean) => void,
  ) {}

  /** Feeds one input to the core (now) and carries out its effects; inputs that arrive meanwhile wait their turn. */
  input(i: InputBody): void {
    if (this.stopped) return;
    if (this.inbox.length >= INBOX_MAX) return this.fatal(new Error(`the agent core cannot keep up with its inputs (${INBOX_MAX} waiting; the newest: ${i.t})`));
    this.inbox.push(i);
    if (this.stepping) return;
    this.stepping = true;
    try {
      for (let x = this.inbox.shift(); x && !this.stopped; x = this.inbox.shift()) {
        const input = { ...x, now: this.io.now() } as Input;
        const t = step(this.core, input);
        this.core = t.state;
        for (const e of t.effects) this.perform(e);
        this.io.stepped?.(input, t.effects, t.state);
      }
    } catch (err) {
      this.fatal(err);
    } finally {
      this.stepping = false;
    }
  }

  /** Takes no more input (the agent stops). */
  stop(): void {
    this.stopped = true;
    this.inbox.length = 0;
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  private fatal(err: unknown): void {
    this.stop();
    this.onFatal(err, err instanceof InvariantError);
  }

  private perform(e: Effect): void {
    const io = this.io;
    switch (e.t) {
      case 'send-peer':
        return io.channel.send(e.path, e.msg);
      case 'ask-witness':
        return io.arbiter?.acquire(e.id, e.ttlMs, e.disk, e.next);
      case 'release-lease':
        return io.arbiter?.release(e.id);
      case 'query-witness':
        return io.arbiter?.query(e.id, e.run, e.disk);
      case 'run':
        return io.runProcedure(e.id, e.procedure, e.fromStep);
      case 'query-qemu':
        return io.queryQemu(e.id, e.oob);
      case 'kill-qemu':
        return io.killQemu(e.why);
      case 'persist-disk':
        return io.persistDisk(e.id, e.epoch, e.pending, e.why);
      case 'note-replica':
        return io.noteReplica(e.note, e.why);
      case 'probe-peer':
        return io.probePeer(e.id, e.what);
      case 'record':
        return io.record(e.event, e.detail);
      case 'decision':
        return io.decision(e.action, e.why);
      case 'log':
        return io.log(e.level, e.msg, e.fields);
    }
  }
}
