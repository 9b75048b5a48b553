/**
 * The simulated cables: one link per cable, each with two ends, carrying
 * messages in order per direction with a small delay. A cable can be cut
 * both ways or one way (only what leaves one end is lost); a link that
 * carries TCP connections with an idle timeout (the agents' links, the
 * witness link) turns a one-way cut into a two-way one once the receiving
 * end gives the connection up and cannot dial again. Messages sent while a
 * direction is cut are delivered when it heals, if their connection
 * survived (TCP retransmits; a long cut more often ends the connection).
 */
import { LINK_IDLE_TIMEOUTS } from '../node/peer-channel.js';
import type { Effect } from '../node/core/types.js';
import { peerMessageSchema } from '../node/wire.js';
import type { World, Host } from './world.js';
import type { SimAgent } from './agents.js';
import { LINKS, LINK_ENDS, type End, type LinkName, type NodeName } from './schedule-types.js';

/** The witness client's link is closed and opened anew after this long without answers (witness.ts, its idleMs default). */
const WITNESS_LINK_IDLE_MS = 3000;

interface Link {
  name: LinkName;
  /** Per end: since when what leaves it is lost (null: it flows). */
  cutFrom: Partial<Record<End, number>>;
  delayMs: number;
  /** Bumped when the connections over it are reset (messages in flight are lost). */
  epoch: number;
  /** Messages sent while their direction was cut: delivered at the heal if their connection survives it. */
  held: Array<{ from: End; go: () => void }>;
}

export class Network {
  readonly links: Record<LinkName, Link>;
  private readonly lastOrder = new Map<string, number>();

  constructor(private readonly w: World) {
    this.links = Object.fromEntries(LINKS.map((l) => [l, { name: l, cutFrom: {}, delayMs: 0, epoch: 0, held: [] }])) as unknown as Record<LinkName, Link>;
  }

  /** How long a one-way cut of `link` stays one-way: until the receiving end gives its connection up (then it cannot dial again). */
  private oneWayMs(link: LinkName): number {
    if (link === 'heartbeat' || link === 'replication') return LINK_IDLE_TIMEOUTS * this.w.setup.core.a.heartbeatTimeoutMs;
    if (link === 'witness-a' || link === 'witness-b') return WITNESS_LINK_IDLE_MS;
    return Infinity;
  }

  /** What leaves `from` on `link` is lost now. */
  cutFrom(link: LinkName, from: End): boolean {
    const l = this.links[link];
    if (l.cutFrom[from] !== undefined) return true;
    const [x, y] = LINK_ENDS[link];
    const other = from === x ? y : x;
    const since = l.cutFrom[other];
    // The other way is cut: this way too once the connection is given up.
    return since !== undefined && this.w.now - since >= this.oneWayMs(link);
  }

  cutEitherWay(link: LinkName): boolean {
    const [x, y] = LINK_ENDS[link];
    return this.cutFrom(link, x) || this.cutFrom(link, y);
  }

  /** Both ways open. */
  up(link: LinkName): boolean {
    return !this.cutEitherWay(link);
  }

  /** Cuts `link`: what leaves `from`, or both ways. */
  cut(link: LinkName, from?: End): void {
    const l = this.links[link];
    for (const e of from ? [from] : LINK_ENDS[link]) l.cutFrom[e] ??= this.w.now;
  }

  heal(link: LinkName, from?: End): void {
    const l = this.links[link];
    const ends = from ? [from] : LINK_ENDS[link];
    const since = Math.min(...ends.map((e) => l.cutFrom[e] ?? Infinity));
    if (since === Infinity) return;
    for (const e of ends) delete l.cutFrom[e];
    if (this.cutEitherWay(link)) return;
    const cutMs = this.w.now - since;
    // TCP retransmits what was sent meanwhile, unless the connection gave up (long cuts).
    const held = l.held.splice(0);
    if (this.w.rng.net.chance(cutMs > 15_000 ? 0.3 : 0.8)) for (const h of held) h.go();
    else l.epoch++;
    if (link === 'replication') this.w.qemu.replicationHealed(cutMs);
  }

  /** Connections over `link` are reset (garbage refused and the connection closed): what was in flight is lost. */
  reset(link: LinkName): void {
    const l = this.links[link];
    l.epoch++;
    l.held = [];
  }

  /** Sends from `from` to `to` over `link`, in order per direction; lost if the link is reset before it arrives. */
  transmit(link: LinkName, from: End, to: End, deliver: () => void): void {
    const l = this.links[link];
    const epoch = l.epoch;
    const go = () => {
      const key = `${link}:${from}>${to}`;
      const t = Math.max(this.w.now + this.w.rng.net.range(0.1, 1.5) + l.delayMs, this.lastOrder.get(key) ?? 0);
      this.lastOrder.set(key, t);
      this.w.at(t, () => {
        if (this.links[link].epoch !== epoch) return;
        // Cut while in flight: held like the rest.
        if (this.cutFrom(link, from)) return void l.held.push({ from, go });
        deliver();
      });
    };
    if (this.cutFrom(link, from)) l.held.push({ from, go });
    else go();
  }

  pathLink(path: number): LinkName {
    return path === 0 ? 'heartbeat' : 'replication';
  }

  private firstOpenPath(from: NodeName): number {
    for (let p = 0; p < this.w.sched.paths; p++) if (!this.cutFrom(this.pathLink(p), from)) return p;
    return 0;
  }

  /** An agent's message to its peer agent (the agent's PeerChannel). */
  sendPeer(h: Host, ag: SimAgent, path: number | 'all' | 'any', msg: Extract<Effect, { t: 'send-peer' }>['msg']): void {
    // What the link would refuse, the model refuses too: the core only says what the wire carries.
    peerMessageSchema.parse(msg);
    const paths = path === 'all' ? [...Array(this.w.sched.paths).keys()] : path === 'any' ? [this.firstOpenPath(h.name)] : [path];
    const peer = this.w.hosts[h.peer];
    const toBoot = peer.agent?.boot;
    for (const p of paths) {
      if (p >= this.w.sched.paths) continue;
      if (!h.up || !peer.up || !toBoot) continue;
      this.transmit(this.pathLink(p), h.name, peer.name, () => {
        if (peer.agent?.boot === toBoot && h.agent?.boot === ag.boot && peer.up) this.w.agents.input(peer.name, { t: 'peer-message', path: p, msg });
      });
    }
  }
}
