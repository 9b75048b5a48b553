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
 *
 * The witness also keeps the pair's newest disk generation: every request
 * carries the node's generation, a node that is about to write alone first
 * records its new one here, and a node whose disk is older than the newest
 * recorded is refused the lease for good (its data is stale: writes that
 * the other node acknowledged while alone would be lost). With a state file
 * that generation survives a restart of the witness.
 */
import fs from 'node:fs';
import type net from 'node:net';
import { listenLinks, connectLink, type Link, type Message } from './link.js';
import { sleep } from '../util/time.js';
import { writeFileAtomic } from '../util/files.js';

export interface WitnessOptions {
  secret: string;
  host: string;
  port: number;
  /** No grants for this long after start (≥ the longest lease in use). */
  graceMs?: number;
  /** Where the newest generation is kept across restarts. */
  stateFile?: string;
  log?: (msg: string) => void;
}

export interface LeaseState {
  holder: string | null;
  remainingMs: number;
  /** The newest disk generation recorded, per run of the pair. */
  generations: Record<string, number>;
}

export class Witness {
  private holder: { node: string; until: number } | undefined;
  private readonly startedAt = performance.now();
  private server: net.Server | undefined;
  private readonly links = new Set<Link>();
  /** The newest disk generation per run of the pair (the runs a `up` started), oldest first. */
  private generations = new Map<string, number>();
  constructor(private readonly o: WitnessOptions) {
    if (o.stateFile) {
      try {
        const saved = (JSON.parse(fs.readFileSync(o.stateFile, 'utf8')) as { generations?: Record<string, number> }).generations ?? {};
        for (const [run, g] of Object.entries(saved)) if (Number.isInteger(g) && g > 0) this.generations.set(run, g);
      } catch {
        /* first start */
      }
    }
  }

  private recordGeneration(run: string, g: number, node: string): void {
    this.generations.delete(run);
    this.generations.set(run, g);
    // Only recent runs matter: a run that ended long ago has no nodes left to ask.
    while (this.generations.size > 100) this.generations.delete(this.generations.keys().next().value!);
    this.o.log?.(`newest disk generation of run ${run}: ${g} (${node})`);
    if (this.o.stateFile) writeFileAtomic(this.o.stateFile, JSON.stringify({ generations: Object.fromEntries(this.generations) }) + '\n', { durable: true });
  }

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
    const generations = Object.fromEntries(this.generations);
    if (!this.holder || this.holder.until <= now) return { holder: null, remainingMs: 0, generations };
    return { holder: this.holder.node, remainingMs: this.holder.until - now, generations };
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
      const gen = Number(m.gen);
      const run = typeof m.run === 'string' ? m.run : undefined;
      const newest = run === undefined ? undefined : this.generations.get(run);
      if (Number.isInteger(gen) && newest !== undefined && gen < newest) {
        l.send({ t: 'lease', id, granted: false, holder: cur.holder, reason: `stale disk: generation ${gen}, the newest is ${newest}` });
        return;
      }
      if (inGrace && cur.holder !== l.peer) {
        l.send({ t: 'lease', id, granted: false, holder: cur.holder, reason: 'witness just started (grace period)' });
        return;
      }
      if (cur.holder === null || cur.holder === l.peer) {
        if (cur.holder !== l.peer) this.o.log?.(`lease granted to ${l.peer} (${ttl} ms)`);
        this.holder = { node: l.peer, until: now + ttl };
        if (run !== undefined && Number.isInteger(gen) && gen > (newest ?? 0)) this.recordGeneration(run, gen, l.peer);
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

/** A node's disk: the run of the pair it belongs to and its generation in that run. */
export interface DiskGeneration {
  run: string;
  gen: number;
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

  /**
   * Asks for (or renews) the lease for `ttlMs`, for a node whose disk has
   * `disk.gen` in `disk.run` (granted only if it is not older than the
   * newest the witness knows of that run; a newer one is recorded with the
   * grant).
   */
  async acquire(ttlMs: number, timeoutMs = 500, disk?: DiskGeneration): Promise<LeaseReply> {
    const sent = performance.now();
    const r = await this.request({ t: 'acquire', ttlMs, ...(disk ?? {}) }, timeoutMs);
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
  async acquireBy(ttlMs: number, deadline: number, disk?: DiskGeneration, pollMs = 50): Promise<LeaseReply | undefined> {
    let last: LeaseReply | undefined;
    while (performance.now() < deadline) {
      try {
        last = await this.acquire(ttlMs, Math.max(50, Math.min(500, deadline - performance.now())), disk);
        if (last.granted) return last;
        // A stale disk stays stale: no use asking again.
        if (last.reason?.startsWith('stale')) return last;
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
