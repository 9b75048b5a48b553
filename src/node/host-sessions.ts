/**
 * A daemon's heartbeat sessions: one authenticated link per pair of hosts
 * and heartbeat path, carrying the agents' messages of every VM the two
 * hosts share. A host with 40 VMs between it and its peer keeps one TCP
 * connection per path to that peer, not 40; a host pair lost is seen once,
 * by every VM they share, at the same moment.
 *
 * A session is a link of link.ts (protocol lockstep/3: mutual HMAC
 * challenge, every frame authenticated and numbered), opened with the two
 * hosts' pair secret (`secretFor`: the daemon derives it from its own key
 * and the other host's pinned certificate, so only those two hosts know it);
 * a host this one does not trust cannot open one. Each path is a pair of
 * addresses (ours, theirs); the host with the lower name dials from its
 * address, both listen on theirs at the heartbeat port.
 *
 * Over a session each host announces the VMs of its own that it carries
 * (`join`, and `leave` when their agent stops). For a VM, path i is up while
 * its session is open and the other host joined the VM on it, as a VM's own
 * link is up while both agents hold it: so a VM's agent sees its peer agent,
 * not merely its peer's daemon. A VM's message is delivered only if it came
 * on one of that VM's own paths, from the host that is that VM's peer here,
 * after that host joined it; anything else is dropped. Pings keep a session
 * without VM traffic from looking dead; a session silent for
 * LINK_IDLE_TIMEOUTS heartbeat timeouts (the smallest of its VMs') is closed
 * and dialled again.
 */
import net from 'node:net';
import type pino from 'pino';
import { listenLinks, connectLink, type Link } from './link.js';
import { LogBudget, budgeted } from '../util/log-budget.js';
import { LINK_IDLE_TIMEOUTS, type PeerChannel, type PeerChannelEvents } from './peer-channel.js';
import { sessionMessageSchema, type PeerMessage, type SessionMessage } from './wire.js';
import { LockstepError, errorMessage } from '../util/errors.js';

/** Sessions are looked after (dialled, pinged, idle ones closed) this often. */
const TICK_MS = 100;
/** A session on which we sent nothing for this long gets a ping. */
const PING_MS = 250;
/** Idle bound of a session that carries no VM of ours (the other host's VMs wait for theirs). */
const DEFAULT_IDLE_MS = 8000;
/** A failed dial is tried again after this long. */
const REDIAL_MS = 500;
/** The VMs one host may announce on a session; more is a hostile or broken peer, and the session is closed. */
const MAX_JOINED = 4096;
/** Refused connections and messages logged at most this many per REFUSALS_WINDOW_MS; the rest are counted. */
const REFUSALS_LOGGED = 20;
const REFUSALS_WINDOW_MS = 10_000;

export interface HostSessionsOptions {
  /** This host, as its peers know it. */
  host: string;
  /** Where we listen, on each heartbeat address of ours that one of our VMs uses. */
  port: number;
  /** The secret this host shares with host `peer`; undefined: not a host we trust (refused). */
  secretFor: (peer: string) => string | undefined;
  log: pino.Logger;
}

/** A VM's channel as it asks for one. */
export interface SessionChannelSpec {
  vm: string;
  /** The VM's other host. */
  peer: string;
  /** Where that host's daemon listens for sessions. */
  peerPort: number;
  /** The VM's paths: our address, the peer's. */
  paths: Array<{ local: string; remote: string }>;
  heartbeatTimeoutMs: number;
}

/** A session, as the API says it. */
export interface SessionStatus {
  peer: string;
  /** "ours→theirs". */
  path: string;
  up: boolean;
  /** The VMs it carries now: joined on both sides. */
  vms: string[];
}

interface Session {
  peer: string;
  local: string;
  remote: string;
  /** The peer's session port, once a VM of ours told us (a session the peer opened may not know it). */
  peerPort: number | undefined;
  link: Link<SessionMessage, SessionMessage> | undefined;
  lastInAt: number;
  lastOutAt: number;
  dialing: boolean;
  /** The VMs the peer joined on this link. */
  joined: Set<string>;
}

interface Member {
  spec: SessionChannelSpec;
  /** The session of each of the VM's paths. */
  sessions: Session[];
  up: boolean[];
  on: PeerChannelEvents;
}

function sessionKey(peer: string, local: string, remote: string): string {
  return `${peer}|${local}|${remote}`;
}

/** The address of "address:port". */
function hostOf(remote: string): string {
  const i = remote.lastIndexOf(':');
  const a = i < 0 ? remote : remote.slice(0, i);
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice('::ffff:'.length) : a;
}

export class HostSessions {
  private readonly sessions = new Map<string, Session>();
  private readonly members = new Map<string, Member>();
  /** Our listeners, by local address; a failed listen is tried again every tick. */
  private readonly servers = new Map<string, net.Server | 'pending'>();
  private readonly listenFailed = new Set<string>();
  private readonly untrustedWarned = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Refusals are logged under a budget: a flood of hostile connections costs a few lines, never the disk. */
  private readonly warnRefused = budgeted(new LogBudget({ perWindow: REFUSALS_LOGGED, windowMs: REFUSALS_WINDOW_MS, now: () => performance.now() }), (line) =>
    this.o.log.warn(line),
  );

  constructor(private readonly o: HostSessionsOptions) {}

  /**
   * Whether a session may come from `remote` to our address `local`: only
   * from a peer host's address on a path of one of our VMs (a host that
   * shares no VM with us, or an address that is no such path's, gets no
   * handshake at all).
   */
  private pathFrom(local: string, remote: string, peer?: string): boolean {
    for (const m of this.members.values()) {
      if (peer !== undefined && m.spec.peer !== peer) continue;
      if (m.spec.paths.some((p) => p.local === local && p.remote === remote)) return true;
    }
    return false;
  }

  /** The channel of VM `spec.vm`: its agent's way to its peer agent, over this host's sessions. */
  channel(spec: SessionChannelSpec): PeerChannel {
    return new SessionChannel(this, spec);
  }

  /** Every session, for status. */
  status(): SessionStatus[] {
    return [...this.sessions.values()]
      .map((s) => ({
        peer: s.peer,
        path: `${s.local}→${s.remote}`,
        up: !!s.link?.isOpen,
        vms: [...this.members.values()].filter((m) => m.sessions.includes(s) && s.joined.has(m.spec.vm)).map((m) => m.spec.vm).sort(),
      }))
      .sort((a, b) => (a.peer + a.path < b.peer + b.path ? -1 : 1));
  }

  /** Ends every session and listener (the daemon stops). */
  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    for (const s of this.sessions.values()) s.link?.close('daemon stops');
    for (const srv of this.servers.values()) if (srv !== 'pending') srv.close();
    this.servers.clear();
  }

  // ---- members (one per VM whose agent runs here) ----

  /** @internal (SessionChannel.open) */
  join(spec: SessionChannelSpec, on: PeerChannelEvents): void {
    if (this.closed) throw new LockstepError(`the heartbeat sessions are closed: VM "${spec.vm}" cannot use them`);
    if (this.members.has(spec.vm)) throw new LockstepError(`VM "${spec.vm}" already has an agent using this host's heartbeat sessions`);
    const m: Member = { spec, sessions: [], up: spec.paths.map(() => false), on };
    for (const p of spec.paths) {
      const s = this.session(spec.peer, p.local, p.remote);
      s.peerPort = spec.peerPort;
      m.sessions.push(s);
      this.listenOn(p.local);
    }
    this.members.set(spec.vm, m);
    for (const s of new Set(m.sessions)) if (s.link?.isOpen) this.send(s, { t: 'join', vm: spec.vm });
    // The paths on which the peer joined already come up from the next turn, as a channel's events do.
    setImmediate(() => {
      if (this.members.get(spec.vm) !== m) return;
      for (const [i, s] of m.sessions.entries()) if (s.link?.isOpen && s.joined.has(spec.vm)) this.setUp(m, i, true);
    });
    this.timer ??= setInterval(() => this.tick(), TICK_MS);
    this.tick();
  }

  /** @internal (SessionChannel.close) */
  leave(vm: string): void {
    const m = this.members.get(vm);
    if (!m) return;
    this.members.delete(vm);
    for (const s of new Set(m.sessions)) if (s.link?.isOpen) this.send(s, { t: 'leave', vm });
  }

  /** @internal (SessionChannel.send) */
  sendVm(vm: string, where: number | 'all' | 'any', msg: PeerMessage): void {
    const m = this.members.get(vm);
    if (!m) return;
    const up = m.sessions.flatMap((s, i) => (m.up[i] && s.link?.isOpen ? [i] : []));
    const targets = where === 'all' ? up : where === 'any' ? up.slice(0, 1) : up.filter((i) => i === where);
    for (const i of targets) this.send(m.sessions[i]!, { t: 'vm', vm, m: msg });
  }

  private setUp(m: Member, i: number, up: boolean): void {
    if (m.up[i] === up) return;
    m.up[i] = up;
    m.on.link(i, up);
  }

  // ---- sessions ----

  private session(peer: string, local: string, remote: string): Session {
    const key = sessionKey(peer, local, remote);
    let s = this.sessions.get(key);
    if (!s) {
      s = { peer, local, remote, peerPort: undefined, link: undefined, lastInAt: 0, lastOutAt: 0, dialing: false, joined: new Set() };
      this.sessions.set(key, s);
    }
    return s;
  }

  private membersOf(s: Session): Member[] {
    return [...this.members.values()].filter((m) => m.sessions.includes(s));
  }

  private send(s: Session, msg: SessionMessage): void {
    try {
      if (s.link?.send(msg)) s.lastOutAt = performance.now();
    } catch (err) {
      this.o.log.error({ err: errorMessage(err), t: msg.t }, 'a session message of ours does not fit the wire format');
    }
  }

  private tick(): void {
    if (this.closed) return;
    const now = performance.now();
    for (const local of this.listenFailed) this.listenOn(local);
    for (const [key, s] of this.sessions) {
      const members = this.membersOf(s);
      if (s.link?.isOpen) {
        const idleMs = members.length ? LINK_IDLE_TIMEOUTS * Math.min(...members.map((m) => m.spec.heartbeatTimeoutMs)) : DEFAULT_IDLE_MS;
        if (now - s.lastInAt > idleMs) s.link.close('nothing received: idle');
        else if (now - s.lastOutAt > PING_MS) this.send(s, { t: 'ping' });
        // The dialling side ends a session none of its VMs uses any more.
        else if (!members.length && this.o.host < s.peer) s.link.close('no VM uses it');
      } else if (members.length && this.o.host < s.peer) {
        void this.dial(s);
      } else if (!members.length && !s.dialing) {
        this.sessions.delete(key);
      }
    }
  }

  private listenOn(local: string): void {
    if (this.closed || this.servers.has(local)) return;
    this.servers.set(local, 'pending');
    this.listenFailed.delete(local);
    listenLinks<SessionMessage, SessionMessage>({
      name: this.o.host,
      secretFor: (peer) => (peer === this.o.host ? undefined : this.o.secretFor(peer)),
      host: local,
      port: this.o.port,
      inbound: sessionMessageSchema,
      outbound: sessionMessageSchema,
      // Before the handshake: only the addresses of our VMs' peer hosts on this address's paths.
      admit: (remote) => (this.pathFrom(local, remote) ? undefined : `${remote} is no peer host's address on a heartbeat path of ours to ${local}`),
      onLink: (l) => {
        // After it: the host it proved must be the peer of one of our VMs on that very path.
        const remote = hostOf(l.remote);
        if (!this.pathFrom(local, remote, l.peer)) {
          this.warnRefused(`heartbeat session: refused ${l.remote} (${l.peer}): host ${l.peer} shares no VM with this host on the path ${local}→${remote}`);
          return void l.close('no VM shared on this path');
        }
        this.adopt(this.session(l.peer, local, remote), l);
      },
      onRefuse: (remote, why, who) => this.warnRefused(`heartbeat session: refused ${remote}${who === undefined ? '' : ` (${who})`}: ${why}`),
    }).then(
      (srv) => {
        if (this.closed) return void srv.close();
        this.servers.set(local, srv);
        this.o.log.info({ address: `${local}:${this.o.port}` }, 'listening for heartbeat sessions');
      },
      (err: unknown) => {
        this.servers.delete(local);
        if (!this.listenFailed.has(local)) {
          this.o.log.error({ address: `${local}:${this.o.port}`, err: errorMessage(err) }, 'cannot listen for heartbeat sessions (tried again every tick): is heartbeatPort in the host file free on that address?');
        }
        this.listenFailed.add(local);
      },
    );
  }

  private async dial(s: Session): Promise<void> {
    if (s.dialing || this.closed || s.peerPort === undefined) return;
    const secret = this.o.secretFor(s.peer);
    if (!secret) {
      if (!this.untrustedWarned.has(s.peer)) this.o.log.error({ peer: s.peer }, `host "${s.peer}" is not trusted here: no heartbeat session to it (lockstep host trust)`);
      this.untrustedWarned.add(s.peer);
      return;
    }
    s.dialing = true;
    try {
      const l = await connectLink<SessionMessage, SessionMessage>({
        name: this.o.host,
        secret,
        host: s.remote,
        port: s.peerPort,
        localAddress: s.local,
        timeoutMs: 1000,
        inbound: sessionMessageSchema,
        outbound: sessionMessageSchema,
        onRefuse: (remote, why, who) => this.warnRefused(`heartbeat session: refused a message from ${remote}${who === undefined ? '' : ` (${who})`}: ${why}`),
      });
      if (this.closed) l.close('daemon stops');
      else this.adopt(s, l);
    } catch (err) {
      this.o.log.debug({ peer: s.peer, path: `${s.local}→${s.remote}`, err: errorMessage(err) }, 'peer host not reachable');
      await new Promise((r) => setTimeout(r, REDIAL_MS));
    } finally {
      s.dialing = false;
    }
  }

  private adopt(s: Session, l: Link<SessionMessage, SessionMessage>): void {
    if (l.peer !== s.peer) {
      // A dialled host that proved another name with our pair secret: impossible unless keys are shared.
      this.o.log.error({ expected: s.peer, claimed: l.peer }, 'heartbeat session: the other end is not the host dialled');
      return void l.close('not the host dialled');
    }
    if (s.link) {
      const old = s.link;
      this.down(s);
      old.close('replaced by a newer link');
    }
    s.link = l;
    s.lastInAt = performance.now();
    this.o.log.info({ peer: s.peer, path: `${s.local}→${s.remote}` }, 'heartbeat session up');
    for (const m of this.membersOf(s)) this.send(s, { t: 'join', vm: m.spec.vm });
    l.on('message', (msg) => {
      if (s.link === l) this.onMessage(s, msg);
    });
    l.on('close', (reason) => {
      if (s.link !== l) return;
      this.o.log.info({ peer: s.peer, path: `${s.local}→${s.remote}`, reason }, 'heartbeat session down');
      this.down(s);
    });
  }

  /** The session's link is gone: every VM on it loses that path. */
  private down(s: Session): void {
    s.link = undefined;
    s.joined.clear();
    for (const m of this.membersOf(s)) m.sessions.forEach((x, i) => x === s && this.setUp(m, i, false));
  }

  private onMessage(s: Session, msg: SessionMessage): void {
    s.lastInAt = performance.now();
    if (msg.t === 'ping') return;
    const m = this.members.get(msg.vm);
    // A VM of ours whose peer is this host, on one of its paths: the only one this message may reach.
    const mine = m && m.spec.peer === s.peer ? m : undefined;
    switch (msg.t) {
      case 'join':
        if (!s.joined.has(msg.vm) && s.joined.size >= MAX_JOINED) return void s.link?.close(`the peer joined over ${MAX_JOINED} VMs`);
        s.joined.add(msg.vm);
        if (mine) mine.sessions.forEach((x, i) => x === s && this.setUp(mine, i, true));
        return;
      case 'leave':
        s.joined.delete(msg.vm);
        if (mine) mine.sessions.forEach((x, i) => x === s && this.setUp(mine, i, false));
        return;
      case 'vm': {
        if (!mine || !s.joined.has(msg.vm)) return void this.o.log.debug({ peer: s.peer, vm: msg.vm }, 'heartbeat session: a message for no VM of ours with that host: dropped');
        for (const [i, x] of mine.sessions.entries()) if (x === s && mine.up[i]) mine.on.message(i, msg.m);
        return;
      }
    }
  }
}

/** A VM's view of its host's sessions. */
class SessionChannel implements PeerChannel {
  readonly paths: readonly string[];

  constructor(
    private readonly sessions: HostSessions,
    private readonly spec: SessionChannelSpec,
  ) {
    this.paths = spec.paths.map((p) => `${p.local}→${p.remote}`);
  }

  open(on: PeerChannelEvents): Promise<void> {
    this.sessions.join(this.spec, on);
    return Promise.resolve();
  }

  tick(): void {
    // The sessions are looked after by their own timer, once for every VM.
  }

  send(where: number | 'all' | 'any', msg: PeerMessage): void {
    this.sessions.sendVm(this.spec.vm, where, msg);
  }

  close(): void {
    this.sessions.leave(this.spec.vm);
  }
}
