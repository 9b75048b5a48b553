/**
 * The daemon's live view for the dashboard: its own overview, and, while
 * anyone watches, the overviews of the hosts its VMs share (asked over the
 * API's mutual TLS, one kept connection per host), merged per VM
 * (live-view.ts) and pushed to each watcher as server-sent events. Bounded
 * everywhere: at most MAX_WATCHERS watchers, each with at most one frame in
 * flight (a slow one misses frames, and is dropped after SLOW_WATCHER_MS),
 * each host asked at most once at a time with a timeout, each history capped.
 */
import type { ApiClient } from './client.js';
import type { Overview } from './api-types.js';
import { liveView, type HostAnswer, type LiveView } from './live-view.js';
import { PAUSES_KEPT } from './observe.js';
import { errorMessage } from '../util/errors.js';

/** Watchers at once per daemon; more are refused (503). */
export const MAX_WATCHERS = 16;
/** A frame to every watcher this often, and at once when a host stops or starts answering. */
const FRAME_MS = 500;
/** Each peer host is asked this often, each answer awaited at most this long (then it counts as not answering). */
const POLL_MS = 500;
const POLL_TIMEOUT_MS = 1000;
/** A watcher that has not taken a frame for this long is dropped. */
const SLOW_WATCHER_MS = 30_000;

export interface LiveSource {
  /** This host's name. */
  host: string;
  /** This host's overview now, with the pauses after `pausesSinceMs`. */
  overview(pausesSinceMs?: number): Overview;
  /** The other hosts of this host's VMs. */
  peers(): string[];
  /** A kept connection to a peer's API. */
  clientFor(peer: string, timeoutMs: number): ApiClient;
  /** The wall clock (ms). */
  wallNow(): number;
}

/** One frame pushed to a watcher: an SSE event name and its JSON. */
export interface Frame {
  event: 'view';
  data: string;
}

interface PeerFollow {
  client: ApiClient;
  overview: Overview | null;
  /** When it last answered, by our clock. */
  okAt: number | null;
  error: string | null;
  asking: boolean;
  /** Its pauses per VM, kept across answers (each answer brings only the new ones). */
  pauses: Map<string, Array<[number, number]>>;
  /** The newest pause it sent (its clock): the next answer brings those after it. */
  pausesUntil: number;
}

interface Watcher {
  send: (f: Frame) => Promise<void>;
  close: () => void;
  /** A frame is on its way. */
  busy: boolean;
  /** When it last took a frame. */
  tookAt: number;
  /** The newest pause it has, per "vm@host": a frame brings only newer ones. */
  cursors: Map<string, number>;
}

export class LiveHub {
  private readonly peerFollows = new Map<string, PeerFollow>();
  private readonly watchers = new Set<Watcher>();
  private frameTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly src: LiveSource) {}

  get clients(): number {
    return this.watchers.size;
  }

  /** The view now, from this host's overview and what its peers last said. */
  view(): LiveView {
    const now = this.src.wallNow();
    const answers: HostAnswer[] = [{ host: this.src.host, overview: this.src.overview(), error: null, ageMs: 0 }];
    for (const peer of this.src.peers()) {
      const f = this.peerFollows.get(peer);
      const overview = f?.overview ? { ...f.overview, vms: f.overview.vms.map((v) => ({ ...v, pauses: f.pauses.get(v.name) ?? [] })) } : null;
      answers.push({ host: peer, overview, error: f?.error ?? (f ? null : 'not asked yet'), ageMs: f?.okAt == null ? null : now - f.okAt });
    }
    return liveView(this.src.host, answers, now);
  }

  /**
   * A new watcher: `send` gets a first frame at once, then one every
   * FRAME_MS; `close` is called when the hub drops it (too slow, or the hub
   * closes). Returns what ends the watch (its connection went away).
   * Throws when MAX_WATCHERS watch already.
   */
  watch(send: (f: Frame) => Promise<void>, close: () => void): () => void {
    if (this.closed) throw new Error('the daemon is stopping');
    if (this.watchers.size >= MAX_WATCHERS) throw new Error(`${MAX_WATCHERS} live views are open on this daemon already`);
    const w: Watcher = { send, close, busy: false, tookAt: this.src.wallNow(), cursors: new Map() };
    this.watchers.add(w);
    if (this.watchers.size === 1) this.begin();
    this.push(w, this.view());
    return () => this.drop(w, false);
  }

  private drop(w: Watcher, tell: boolean): void {
    if (!this.watchers.delete(w)) return;
    if (tell) w.close();
    if (this.watchers.size === 0) this.end();
  }

  /** The first watcher came: frames and the peers' polls begin. */
  private begin(): void {
    this.poll();
    this.frameTimer = setInterval(() => this.frame(), FRAME_MS);
    this.pollTimer = setInterval(() => this.poll(), POLL_MS);
  }

  /** The last watcher went: nothing is asked of the peers any more, their connections end. */
  private end(): void {
    clearInterval(this.frameTimer);
    clearInterval(this.pollTimer);
    this.frameTimer = this.pollTimer = undefined;
    for (const f of this.peerFollows.values()) f.client.close();
    this.peerFollows.clear();
  }

  private frame(): void {
    if (this.watchers.size === 0) return;
    const v = this.view();
    for (const w of [...this.watchers]) this.push(w, v);
  }

  private push(w: Watcher, v: LiveView): void {
    const now = this.src.wallNow();
    if (w.busy) {
      if (now - w.tookAt > SLOW_WATCHER_MS) this.drop(w, true);
      return;
    }
    // Each watcher gets only the pauses it does not have yet.
    const next = new Map(w.cursors);
    const view = {
      ...v,
      vms: v.vms.map((vm) => ({
        ...vm,
        parts: vm.parts.map((p) => {
          if (!p.vm) return p;
          const key = `${vm.name}@${p.host}`;
          const after = w.cursors.get(key) ?? 0;
          const pauses = p.vm.pauses.filter(([at]) => at > after);
          if (pauses.length) next.set(key, pauses[pauses.length - 1]![0]);
          return { ...p, vm: { ...p.vm, pauses } };
        }),
      })),
    };
    w.busy = true;
    w.send({ event: 'view', data: JSON.stringify(view) }).then(
      () => {
        w.busy = false;
        w.tookAt = this.src.wallNow();
        w.cursors = next;
      },
      () => this.drop(w, true),
    );
  }

  /** Asks each peer host (not one already being asked) for its overview. */
  private poll(): void {
    const peers = this.src.peers();
    for (const peer of peers) {
      let f = this.peerFollows.get(peer);
      if (!f) {
        try {
          f = { client: this.src.clientFor(peer, POLL_TIMEOUT_MS), overview: null, okAt: null, error: null, asking: false, pauses: new Map(), pausesUntil: 0 };
        } catch {
          // A host this one does not trust (or whose file is broken): said in the view, asked again next time.
          this.peerFollows.delete(peer);
          continue;
        }
        this.peerFollows.set(peer, f);
      }
      if (f.asking) continue;
      f.asking = true;
      const follow = f;
      follow.client.overview(follow.pausesUntil).then(
        (o) => {
          const wasDown = follow.error !== null || follow.okAt === null;
          follow.asking = false;
          follow.okAt = this.src.wallNow();
          follow.error = null;
          for (const v of o.vms) {
            const ring = follow.pauses.get(v.name) ?? [];
            for (const p of v.pauses) if (p[0] > follow.pausesUntil) ring.push(p);
            if (ring.length > PAUSES_KEPT) ring.splice(0, ring.length - PAUSES_KEPT);
            follow.pauses.set(v.name, ring);
          }
          for (const name of [...follow.pauses.keys()]) if (!o.vms.some((v) => v.name === name)) follow.pauses.delete(name);
          follow.pausesUntil = Math.max(follow.pausesUntil, ...o.vms.flatMap((v) => v.pauses.map(([at]) => at)));
          follow.overview = o;
          if (wasDown) this.frame();
        },
        (err: unknown) => {
          const wasUp = follow.error === null;
          follow.asking = false;
          follow.error = errorMessage(err);
          if (wasUp) this.frame();
        },
      );
    }
    for (const [peer, f] of this.peerFollows) {
      if (peers.includes(peer)) continue;
      f.client.close();
      this.peerFollows.delete(peer);
    }
  }

  close(): void {
    this.closed = true;
    for (const w of [...this.watchers]) this.drop(w, true);
  }
}
