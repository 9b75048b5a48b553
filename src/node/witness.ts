/**
 * The witness: a third party both nodes can reach, granting one writer lease
 * at a time. A node may become (or stay) the only writer of the VM while it
 * holds the lease; a node that cannot get it must not write.
 *
 * The lease is time-bounded. The holder renews it well before it runs out;
 * the holder's own view of its lease starts counting when it *sent* the
 * request, so it always ends before the witness's view does and the witness
 * never grants a lease that someone still believes is theirs. After a
 * restart the witness grants nothing for a grace period, so a lease granted
 * by its previous life runs out first.
 */
import type net from 'node:net';
import { listenLinks, connectLink, type Link, type Message } from './link.js';
import { sleep } from '../util/time.js';

export interface WitnessOptions {
  secret: string;
  host: string;
  port: number;
  /** No grants for this long after start (≥ the longest lease in use). */
  graceMs?: number;
  log?: (msg: string) => void;
}

export interface LeaseState {
  holder: string | null;
  remainingMs: number;
}

export class Witness {
  private holder: { node: string; until: number } | undefined;
  private readonly startedAt = performance.now();
  private server: net.Server | undefined;
  private readonly links = new Set<Link>();
  constructor(private readonly o: WitnessOptions) {}

  async start(): Promise<void> {
    this.server = await listenLinks({
      name: 'witness',
      secret: this.o.secret,
      host: this.o.host,
      port: this.o.port,
      onLink: (l) => this.onLink(l),
      onReject: (remote, why) => this.o.log?.(`rejected ${remote}: ${why}`),
    });
    this.o.log?.(`witness listening on ${this.o.host}:${this.port}; no grants for ${this.o.graceMs ?? 2000} ms`);
  }

  get port(): number {
    return (this.server?.address() as net.AddressInfo | null)?.port ?? this.o.port;
  }

  state(): LeaseState {
    const now = performance.now();
    if (!this.holder || this.holder.until <= now) return { holder: null, remainingMs: 0 };
    return { holder: this.holder.node, remainingMs: this.holder.until - now };
  }

  private onLink(l: Link): void {
    this.links.add(l);
    l.on('close', () => this.links.delete(l));
    l.on('message', (m) => this.onMessage(l, m));
  }

  private onMessage(l: Link, m: Message): void {
    const now = performance.now();
    const id = m.id;
    if (m.t === 'acquire') {
      const ttl = Math.min(Math.max(Number(m.ttlMs) || 0, 50), 60_000);
      const inGrace = now - this.startedAt < (this.o.graceMs ?? 2000);
      const cur = this.state();
      if (inGrace && cur.holder !== l.peer) {
        l.send({ t: 'lease', id, granted: false, holder: cur.holder, reason: 'witness just started (grace period)' });
        return;
      }
      if (cur.holder === null || cur.holder === l.peer) {
        if (cur.holder !== l.peer) this.o.log?.(`lease granted to ${l.peer} (${ttl} ms)`);
        this.holder = { node: l.peer, until: now + ttl };
        l.send({ t: 'lease', id, granted: true, holder: l.peer, ttlMs: ttl });
      } else {
        l.send({ t: 'lease', id, granted: false, holder: cur.holder, remainingMs: Math.round(cur.remainingMs) });
      }
    } else if (m.t === 'release') {
      if (this.holder?.node === l.peer) {
        this.holder = undefined;
        this.o.log?.(`lease released by ${l.peer}`);
      }
      l.send({ t: 'released', id });
    } else if (m.t === 'query') {
      l.send({ t: 'state', id, ...this.state() });
    }
  }

  async stop(): Promise<void> {
    for (const l of this.links) l.close();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

export interface LeaseReply {
  granted: boolean;
  holder: string | null;
  /** Local monotonic time until which the lease is ours (when granted). */
  validUntil?: number;
  remainingMs?: number;
  reason?: string;
}

/** The agent's side: one link to the witness, reopened as needed. */
export class WitnessClient {
  private link: Link | undefined;
  private connecting: Promise<Link> | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, (m: Message) => void>();
  private closed = false;

  constructor(
    private readonly o: { name: string; secret: string; host: string; port: number; localAddress?: string },
  ) {}

  private async ensure(timeoutMs: number): Promise<Link> {
    if (this.link?.isOpen) return this.link;
    this.connecting ??= connectLink({ ...this.o, timeoutMs })
      .then((l) => {
        this.link = l;
        l.on('message', (m) => {
          const cb = this.pending.get(Number(m.id));
          if (cb) {
            this.pending.delete(Number(m.id));
            cb(m);
          }
        });
        l.on('close', () => {
          if (this.link === l) this.link = undefined;
        });
        return l;
      })
      .finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async request(m: Message, timeoutMs: number): Promise<Message> {
    if (this.closed) throw new Error('witness client closed');
    const l = await this.ensure(timeoutMs);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`witness did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, (reply) => {
        clearTimeout(t);
        resolve(reply);
      });
      if (!l.send({ ...m, id })) {
        clearTimeout(t);
        this.pending.delete(id);
        reject(new Error('witness link closed'));
      }
    });
  }

  /** Asks for (or renews) the lease for `ttlMs`. */
  async acquire(ttlMs: number, timeoutMs = 500): Promise<LeaseReply> {
    const sent = performance.now();
    const r = await this.request({ t: 'acquire', ttlMs }, timeoutMs);
    const granted = r.granted === true;
    return {
      granted,
      holder: (r.holder as string | null) ?? null,
      validUntil: granted ? sent + Number(r.ttlMs ?? ttlMs) : undefined,
      remainingMs: typeof r.remainingMs === 'number' ? r.remainingMs : undefined,
      reason: typeof r.reason === 'string' ? r.reason : undefined,
    };
  }

  async release(timeoutMs = 500): Promise<void> {
    await this.request({ t: 'release' }, timeoutMs).catch(() => {});
  }

  /** Tries to get the lease until `deadlineMs` (monotonic), polling; returns the last reply. */
  async acquireBy(ttlMs: number, deadline: number, pollMs = 50): Promise<LeaseReply | undefined> {
    let last: LeaseReply | undefined;
    while (performance.now() < deadline) {
      try {
        last = await this.acquire(ttlMs, Math.max(50, Math.min(500, deadline - performance.now())));
        if (last.granted) return last;
      } catch {
        /* unreachable: keep trying until the deadline */
      }
      await sleep(pollMs);
    }
    return last;
  }

  close(): void {
    this.closed = true;
    this.link?.close();
  }
}
