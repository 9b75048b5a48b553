/**
 * A typed QMP (QEMU Machine Protocol) client.
 *
 * Modelled on QEMU's python/qemu/qmp: an explicit state machine
 * (idle → connecting → running → disconnecting → idle), commands matched to
 * replies by id so several can be in flight, a timeout on every command,
 * scoped event listeners that are registered before the command that causes
 * the event, typed errors, and out-of-band execution when the server offers it.
 */
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { QmpCommandError, QmpConnectError, QmpDisconnectedError, QmpNegotiationError, QmpTimeoutError } from './errors.js';
import { TimeoutError } from '../util/errors.js';
import { connectSocket } from '../util/net.js';

export type QmpAddress = string | { host: string; port: number };

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
  /** Wall-clock milliseconds computed from the QEMU timestamp. */
  time: number;
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export type QmpState = 'idle' | 'connecting' | 'running' | 'disconnecting';

export interface ConnectOptions {
  /** Whole-connection budget: socket open + greeting + negotiation. */
  timeoutMs?: number;
  /** Ask for out-of-band execution if the server offers it (default true). */
  oob?: boolean;
}

export interface ExecuteOptions {
  timeoutMs?: number;
  /** Execute out of band (needs the "oob" capability), e.g. for yank. */
  oob?: boolean;
}

export type EventFilter = string | string[] | ((e: QmpEvent) => boolean);

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export const DEFAULT_COMMAND_TIMEOUT_MS = 15_000;

function matches(filter: EventFilter, e: QmpEvent): boolean {
  if (typeof filter === 'string') return e.event === filter;
  if (Array.isArray(filter)) return filter.includes(e.event);
  return filter(e);
}

/**
 * What the COLO procedures use of a QMP connection: commands, HMP and events.
 * A QmpClient, or a stand-in (the simulator builds the procedures' step lists
 * with one that is never asked anything, to read their names).
 */
export type QmpCommands = Pick<QmpClient, 'execute' | 'hmp' | 'listen' | 'oobEnabled'>;

/**
 * A scoped event listener: it buffers matching events from the moment it is
 * created until it is closed, so an event cannot slip by between issuing a
 * command and starting to wait for its effect.
 */
export class EventListener {
  private readonly queue: QmpEvent[] = [];
  private waiter: { resolve: (e: QmpEvent) => void; reject: (e: Error) => void } | undefined;
  private closedWith: Error | undefined;

  constructor(
    private readonly client: QmpClient,
    readonly filter: EventFilter,
  ) {}

  /** @internal */
  push(e: QmpEvent): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve(e);
    } else {
      this.queue.push(e);
    }
  }

  /** @internal */
  fail(err: Error): void {
    this.closedWith = err;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.reject(err);
    }
  }

  /** Events received and not yet consumed. */
  drain(): QmpEvent[] {
    return this.queue.splice(0);
  }

  /** The next matching event, or TimeoutError. */
  next(timeoutMs: number, what?: string): Promise<QmpEvent> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.waiter) return Promise.reject(new Error('EventListener.next() is already waiting'));
    return new Promise<QmpEvent>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new TimeoutError(what ?? `QMP event ${describeFilter(this.filter)} from ${this.client.address}`, timeoutMs));
      }, timeoutMs);
      this.waiter = {
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
    });
  }

  /** Waits for the first event for which `pred` is true, skipping others. */
  async until(pred: (e: QmpEvent) => boolean, timeoutMs: number, what?: string): Promise<QmpEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new TimeoutError(what ?? `QMP event ${describeFilter(this.filter)}`, timeoutMs);
      const e = await this.next(left, what);
      if (pred(e)) return e;
    }
  }

  close(): void {
    this.client.detach(this);
    this.fail(new Error('listener closed'));
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function describeFilter(f: EventFilter): string {
  if (typeof f === 'string') return f;
  if (Array.isArray(f)) return f.join('|');
  return '(custom filter)';
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; disconnect: [Error | undefined] }> {
  private socket: net.Socket | undefined;
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly scoped = new Set<EventListener>();
  private _state: QmpState = 'idle';
  private _greeting: QmpGreeting | undefined;
  private _oob = false;
  address = '';

  get state(): QmpState {
    return this._state;
  }
  get greeting(): QmpGreeting | undefined {
    return this._greeting;
  }
  /** Whether out-of-band execution was negotiated. */
  get oobEnabled(): boolean {
    return this._oob;
  }

  static async connect(address: QmpAddress, opts: ConnectOptions = {}): Promise<QmpClient> {
    const c = new QmpClient();
    await c.connect(address, opts);
    return c;
  }

  async connect(address: QmpAddress, opts: ConnectOptions = {}): Promise<void> {
    if (this._state !== 'idle') throw new Error(`QmpClient.connect() in state ${this._state}`);
    const timeoutMs = opts.timeoutMs ?? 5_000;
    this.address = typeof address === 'string' ? address : `${address.host}:${address.port}`;
    this._state = 'connecting';
    const deadline = Date.now() + timeoutMs;
    let greetingResolve!: (g: unknown) => void;
    const greetingP = new Promise<unknown>((r) => (greetingResolve = r));
    this.onGreeting = greetingResolve;
    try {
      this.socket = await connectSocket(typeof address === 'string' ? { path: address } : address, timeoutMs, () => new TimeoutError(`QMP socket ${this.address} to accept`, timeoutMs));
    } catch (err) {
      this._state = 'idle';
      this.socket = undefined;
      if (err instanceof TimeoutError) throw err;
      throw new QmpConnectError(this.address, err);
    }
    const s = this.socket!;
    s.setEncoding('utf8');
    s.on('data', (chunk: string) => this.onData(chunk));
    s.on('error', () => {
      /* 'close' follows and does the cleanup */
    });
    s.on('close', () => this.onClose());

    try {
      const raw = await this.raceClose(greetingP, Math.max(1, deadline - Date.now()), 'the QMP greeting');
      const g = (raw as { QMP?: QmpGreeting }).QMP;
      if (!g || typeof g !== 'object') throw new QmpNegotiationError(this.address, `unexpected greeting ${JSON.stringify(raw)}`);
      this._greeting = g;
      const wantOob = (opts.oob ?? true) && g.capabilities.includes('oob');
      this._state = 'running'; // allow execute() for negotiation
      await this.execute('qmp_capabilities', wantOob ? { enable: ['oob'] } : undefined, {
        timeoutMs: Math.max(1, deadline - Date.now()),
      });
      this._oob = wantOob;
    } catch (err) {
      this.destroy();
      if (err instanceof QmpNegotiationError || err instanceof TimeoutError) throw err;
      throw new QmpNegotiationError(this.address, (err as Error).message);
    }
  }

  private onGreeting: ((g: unknown) => void) | undefined;

  private raceClose<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new TimeoutError(`${what} from ${this.address}`, ms)), ms);
      const onClose = () => {
        clearTimeout(timer);
        reject(new QmpDisconnectedError(this.address, `waiting for ${what}`));
      };
      this.once('disconnect', onClose);
      p.then(
        (v) => {
          clearTimeout(timer);
          this.off('disconnect', onClose);
          resolve(v);
        },
        (e) => {
          clearTimeout(timer);
          this.off('disconnect', onClose);
          reject(e);
        },
      );
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        this.protocolError(`invalid JSON from server: ${line.slice(0, 200)}`);
        return;
      }
      this.dispatch(msg);
    }
  }

  private protocolError(detail: string): void {
    const err = new QmpNegotiationError(this.address, detail);
    this.destroy(err);
  }

  private dispatch(msg: Record<string, unknown>): void {
    if ('QMP' in msg) {
      const cb = this.onGreeting;
      this.onGreeting = undefined;
      cb?.(msg);
      return;
    }
    if (typeof msg.event === 'string') {
      const ts = (msg.timestamp as QmpEvent['timestamp']) ?? { seconds: 0, microseconds: 0 };
      const e: QmpEvent = {
        event: msg.event,
        data: (msg.data as Record<string, unknown>) ?? {},
        timestamp: ts,
        time: ts.seconds * 1000 + ts.microseconds / 1000,
      };
      for (const l of this.scoped) if (matches(l.filter, e)) l.push(e);
      this.emit('event', e);
      return;
    }
    const id = msg.id;
    if (typeof id !== 'string') {
      // Replies without id only come for commands we never send that way.
      return;
    }
    const p = this.pending.get(id);
    if (!p) return; // a late answer to a command that timed out
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('return' in msg) {
      p.resolve(msg.return);
    } else if (msg.error && typeof msg.error === 'object') {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(new QmpCommandError(p.command, e.class ?? 'GenericError', e.desc ?? '(no description)'));
    } else {
      p.reject(new QmpNegotiationError(this.address, `malformed reply ${JSON.stringify(msg).slice(0, 200)}`));
    }
  }

  /**
   * Runs one QMP command. Resolves with its "return" value; rejects with
   * QmpCommandError, QmpTimeoutError or QmpDisconnectedError.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<T> {
    if (this._state !== 'running' || !this.socket) {
      return Promise.reject(new QmpDisconnectedError(this.address || '(not connected)', `sending ${command}`));
    }
    if (opts.oob && !this._oob) {
      return Promise.reject(new Error(`QMP ${command}: out-of-band execution was not negotiated with ${this.address}`));
    }
    const id = `lockstep-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    const msg: Record<string, unknown> = { [opts.oob ? 'exec-oob' : 'execute']: command, id };
    if (args !== undefined) msg.arguments = args;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        // Keep the id known as "abandoned" by just forgetting it: a late reply is dropped.
        this.pending.delete(id);
        reject(new QmpTimeoutError(command, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket!.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Runs an HMP command through human-monitor-command; returns its text output. */
  hmp(commandLine: string, opts: ExecuteOptions = {}): Promise<string> {
    return this.execute<string>('human-monitor-command', { 'command-line': commandLine }, opts);
  }

  /** A scoped listener for events matching `filter`, buffered from now on. */
  listen(filter: EventFilter): EventListener {
    const l = new EventListener(this, filter);
    if (this._state === 'idle') l.fail(new QmpDisconnectedError(this.address || '(not connected)', 'listening for events'));
    this.scoped.add(l);
    return l;
  }

  /** @internal Called by EventListener.close(). */
  detach(l: EventListener): void {
    this.scoped.delete(l);
  }

  /** Closes the connection gracefully; pending commands are rejected. */
  async close(): Promise<void> {
    if (this._state === 'idle' || !this.socket) return;
    this._state = 'disconnecting';
    const s = this.socket;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        s.destroy();
        resolve();
      }, 1000);
      s.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      s.end();
    });
  }

  /** Drops the connection at once. */
  destroy(err?: Error): void {
    if (!this.socket) {
      this._state = 'idle';
      return;
    }
    this.closeReason = err;
    this.socket.destroy();
    this.onClose();
  }

  private closeReason: Error | undefined;

  private onClose(): void {
    if (this._state === 'idle' && !this.socket) return;
    const reason = this.closeReason;
    this.socket = undefined;
    this._state = 'idle';
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(reason ?? new QmpDisconnectedError(this.address, `waiting for the answer to ${p.command}`));
      this.pending.delete(id);
    }
    for (const l of this.scoped) l.fail(new QmpDisconnectedError(this.address, 'waiting for events'));
    this.scoped.clear();
    this.emit('disconnect', reason);
  }
}
