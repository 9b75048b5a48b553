/**
 * How an agent reaches its peer agent: one channel per VM, with a path per
 * heartbeat network. The agent only sends and receives through it; which
 * sockets carry the messages is the channel's business:
 *
 *  - OwnLinks (here): the VM's own authenticated links, one per path, with
 *    the VM's agents' secret, listened for on the VM's agents port. What a
 *    pair run by `lockstep up` (one process per node) uses.
 *  - HostSessions (host-sessions.ts): the daemon's one session per pair of
 *    hosts and path, carrying every VM the two hosts share.
 *
 * Either way a path is "up" while the peer agent of this VM can be reached
 * on it, and a message is delivered only if it came from that peer agent.
 */
import net from 'node:net';
import type pino from 'pino';
import { listenLinks, connectLink, type Link } from './link.js';
import { peerMessageSchema, type PeerMessage } from './wire.js';
import { sleep } from '../util/time.js';
import { errorMessage } from '../util/errors.js';
import { LogBudget, budgeted } from '../util/log-budget.js';

/** A link on which nothing arrived for this many heartbeat timeouts is closed and dialled again. */
export const LINK_IDLE_TIMEOUTS = 4;

/** What a channel tells its agent, from the next turn of the event loop after `open`. */
export interface PeerChannelEvents {
  /** Path `path` to the peer agent came up or went down. */
  link(path: number, up: boolean): void;
  /** A message from the peer agent arrived on path `path`. */
  message(path: number, msg: PeerMessage): void;
}

export interface PeerChannel {
  /** The paths, as "local→remote", in order. */
  readonly paths: readonly string[];
  /** Starts carrying the VM's messages (listening, dialling); resolves once it can. */
  open(on: PeerChannelEvents): Promise<void>;
  /** Every agent tick (monotonic ms): links that went silent are closed, missing ones dialled. */
  tick(nowMs: number): void;
  /** Sends on one path, on every open one, or on any one open; a path that is down drops the message. */
  send(where: number | 'all' | 'any', msg: PeerMessage): void;
  /** Stops: the peer sees the paths go down. */
  close(): void;
}

/** The paths of a VM between two nodes: their heartbeat addresses paired in order, as many as both have. */
export function pairPaths(mine: readonly string[], theirs: readonly string[]): Array<{ local: string; remote: string }> {
  return mine.slice(0, theirs.length).map((local, i) => ({ local, remote: theirs[i]! }));
}

export interface OwnLinksOptions {
  /** This node and its peer, as the agents prove themselves. */
  name: string;
  peer: string;
  /** The agents' secret. */
  secret: string;
  /** The agents' port, the same on both nodes. */
  port: number;
  paths: Array<{ local: string; remote: string }>;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  log: pino.Logger;
}

interface OwnPath {
  local: string;
  remote: string;
  link: Link<PeerMessage, PeerMessage> | undefined;
  lastInAt: number;
  dialing: boolean;
}

/** A VM's own links to its peer agent: one per path, the node with the lower name dials. */
export class OwnLinks implements PeerChannel {
  readonly paths: readonly string[];
  private readonly own: OwnPath[];
  private readonly servers: net.Server[] = [];
  private on: PeerChannelEvents | undefined;
  private closed = false;

  /** Refusals are logged under a budget (20 per 10 s, then a count): a flood of connections costs a few lines. */
  private readonly warnRefused = budgeted(new LogBudget({ perWindow: 20, windowMs: 10_000, now: () => performance.now() }), (line) => this.o.log.warn(line));

  constructor(private readonly o: OwnLinksOptions) {
    this.own = o.paths.map((p) => ({ ...p, link: undefined, lastInAt: 0, dialing: false }));
    this.paths = this.own.map((p) => `${p.local}→${p.remote}`);
  }

  async open(on: PeerChannelEvents): Promise<void> {
    this.on = on;
    for (const [i, p] of this.own.entries()) {
      this.servers.push(
        await listenLinks<PeerMessage, PeerMessage>({
          name: this.o.name,
          secret: this.o.secret,
          host: p.local,
          port: this.o.port,
          inbound: peerMessageSchema,
          outbound: peerMessageSchema,
          // Only the peer, from its address on this path, gets a handshake.
          admit: (remote) => (remote === p.remote ? undefined : `${remote} is not the peer's address on the path ${p.local}→${p.remote}`),
          onLink: (l) => this.adopt(i, l),
          onRefuse: (remote, why, who) => this.warnRefused(`refused a connection or message from ${remote}${who === undefined ? '' : ` (${who})`}: ${why}`),
        }),
      );
    }
  }

  tick(nowMs: number): void {
    for (const p of this.own) {
      if (p.link?.isOpen && nowMs - p.lastInAt > LINK_IDLE_TIMEOUTS * this.o.heartbeatTimeoutMs) p.link.close('nothing received: idle');
      if (!p.link?.isOpen && this.o.name < this.o.peer) void this.dial(p);
    }
  }

  send(where: number | 'all' | 'any', msg: PeerMessage): void {
    const open = this.own.filter((p) => p.link?.isOpen);
    const targets = where === 'all' ? open : where === 'any' ? open.slice(0, 1) : [this.own[where]].filter((p): p is OwnPath => !!p?.link?.isOpen);
    for (const p of targets) {
      try {
        p.link!.send(msg);
      } catch (err) {
        this.o.log.error({ err: errorMessage(err), t: msg.t }, 'a message of ours does not fit the wire format');
      }
    }
  }

  close(): void {
    this.closed = true;
    for (const p of this.own) p.link?.close('agent stops');
    for (const s of this.servers) s.close();
  }

  private async dial(p: OwnPath): Promise<void> {
    if (p.dialing || this.closed) return;
    p.dialing = true;
    try {
      const l = await connectLink<PeerMessage, PeerMessage>({
        name: this.o.name,
        secret: this.o.secret,
        host: p.remote,
        port: this.o.port,
        localAddress: p.local,
        timeoutMs: 1000,
        inbound: peerMessageSchema,
        outbound: peerMessageSchema,
        onRefuse: (remote, why, who) => this.warnRefused(`refused a message from ${remote}${who === undefined ? '' : ` (${who})`}: ${why}`),
      });
      if (this.closed) l.close('agent stops');
      else this.adopt(this.own.indexOf(p), l);
    } catch (err) {
      this.o.log.debug({ path: `${p.local}→${p.remote}`, err: errorMessage(err) }, 'peer not reachable');
      await sleep(Math.max(100, this.o.heartbeatIntervalMs * 2));
    } finally {
      p.dialing = false;
    }
  }

  private adopt(i: number, l: Link<PeerMessage, PeerMessage>): void {
    const p = this.own[i]!;
    const on = this.on!;
    if (l.peer !== this.o.peer) {
      this.o.log.warn({ claimed: l.peer }, 'refused an authenticated link from a node that is not our peer');
      l.close('not our peer');
      return;
    }
    p.link?.close('replaced by a newer link');
    p.link = l;
    p.lastInAt = performance.now();
    this.o.log.info({ path: `${p.local}→${p.remote}` }, 'peer link up');
    on.link(i, true);
    l.on('message', (m) => {
      p.lastInAt = performance.now();
      on.message(i, m);
    });
    l.on('close', (reason) => {
      this.o.log.info({ path: `${p.local}→${p.remote}`, reason }, 'peer link down');
      if (p.link === l) {
        p.link = undefined;
        on.link(i, false);
      }
    });
  }
}
