/**
 * A lab of separate hosts on this one machine: a network namespace per host
 * (node A, node B, the witness W, a client C) and one for the switch (S),
 * joined by veth cables, so that each link can be cut on its own:
 *
 *            S: bridge "lan" ─────────────── C (client, 10.0.2.2)
 *              │          │
 *        A: br0 ─ tap-a   B: br0 ─ tap-b      (guest LAN; a tap joins its br0)
 *        A ══ replication (10.10.1.1 ↔ .2) ══ B
 *        A ══ heartbeat   (10.10.2.1 ↔ .2) ══ B
 *            S: bridge "mgmt" ─ A 10.10.3.1, B 10.10.3.2, W 10.10.3.3
 *
 * Cuts take a cable's end down: packets stop without a reset, as when a cable
 * is pulled. Everything is named after this process and removed by remove().
 */
import crypto from 'node:crypto';
import { run } from '../util/exec.js';
import { LockstepError } from '../util/errors.js';
import { ip } from './netns.js';

export const LINKS = ['replication', 'heartbeat', 'witness-a', 'witness-b', 'lan-a', 'lan-b'] as const;
export type LinkName = (typeof LINKS)[number];

export interface LabHosts {
  /** Namespace names by role. */
  ns: { a: string; b: string; witness: string; client: string; switch: string };
  /** Addresses: the nodes on each link, the witness, the client. */
  addr: {
    replication: { a: string; b: string };
    heartbeat: { a: string; b: string };
    mgmt: { a: string; b: string; witness: string };
    client: string;
  };
  /** The guest taps, one per node, in the node's namespace (not on its bridge yet). */
  taps: { a: string; b: string };
  bridge: string;
  cut(link: LinkName): Promise<void>;
  restore(link: LinkName): Promise<void>;
  /**
   * A cable between the nodes cut one way: what `from` sends over it is lost, what comes to it still arrives. A
   * blackhole route on `from` to the other end's address: dropped before it leaves, without a reset or an error the
   * peer could see (a dead transmitter, a filter that drops).
   */
  cutFrom(link: 'replication' | 'heartbeat', from: 'a' | 'b'): Promise<void>;
  restoreFrom(link: 'replication' | 'heartbeat', from: 'a' | 'b'): Promise<void>;
  /** Cuts every link of a node (replication, heartbeat, witness, LAN). */
  isolate(node: 'a' | 'b'): Promise<void>;
  /** Reconnects every link. */
  heal(): Promise<void>;
  remove(): Promise<void>;
}

/** Where each link's cable end lives: namespace and interface. */
function linkEnd(h: LabHosts, link: LinkName): { ns: string; dev: string } {
  switch (link) {
    case 'replication':
      return { ns: h.ns.a, dev: 'rep0' };
    case 'heartbeat':
      return { ns: h.ns.a, dev: 'hb0' };
    case 'witness-a':
      return { ns: h.ns.a, dev: 'mg0' };
    case 'witness-b':
      return { ns: h.ns.b, dev: 'mg0' };
    case 'lan-a':
      return { ns: h.ns.a, dev: 'up0' };
    case 'lan-b':
      return { ns: h.ns.b, dev: 'up0' };
  }
}

/** The lab hosts behind these namespace names (made by createLabHosts, possibly by another process). */
export function labHosts(ns: LabHosts['ns']): LabHosts {
  /** The blackhole route on `from` to the other node's address on `link` (cutFrom). */
  const blackhole = (op: 'add' | 'del', link: 'replication' | 'heartbeat', from: 'a' | 'b') =>
    ip(['-n', ns[from], 'route', op, 'blackhole', `${h.addr[link][from === 'a' ? 'b' : 'a']}/32`]);
  const h: LabHosts = {
    ns,
    addr: {
      replication: { a: '10.10.1.1', b: '10.10.1.2' },
      heartbeat: { a: '10.10.2.1', b: '10.10.2.2' },
      mgmt: { a: '10.10.3.1', b: '10.10.3.2', witness: '10.10.3.3' },
      client: '10.0.2.2',
    },
    taps: { a: 'tap-a', b: 'tap-b' },
    bridge: 'br0',
    async cut(link) {
      const e = linkEnd(h, link);
      await ip(['-n', e.ns, 'link', 'set', e.dev, 'down']);
    },
    async restore(link) {
      const e = linkEnd(h, link);
      await ip(['-n', e.ns, 'link', 'set', e.dev, 'up']);
    },
    async cutFrom(link, from) {
      await blackhole('add', link, from);
    },
    async restoreFrom(link, from) {
      await blackhole('del', link, from);
    },
    async isolate(node) {
      for (const l of ['replication', 'heartbeat', `witness-${node}`, `lan-${node}`] as LinkName[]) await h.cut(l);
    },
    async heal() {
      for (const l of LINKS) await h.restore(l);
    },
    async remove() {
      for (const n of Object.values(ns).reverse()) await run('ip', ['netns', 'del', n], { allowFailure: true, timeoutMs: 10_000 });
    },
  };
  return h;
}

/** Creates the lab hosts; names start with `prefix` and are unique to this process. */
export async function createLabHosts(o: { prefix?: string } = {}): Promise<LabHosts> {
  if (process.getuid?.() !== 0) throw new LockstepError('the lab hosts are network namespaces and need root', { hint: 'run as root' });
  const tag = `${o.prefix ?? 'lh'}${process.pid % 1000}${crypto.randomBytes(2).toString('hex')}`;
  const ns = { a: `${tag}a`, b: `${tag}b`, witness: `${tag}w`, client: `${tag}c`, switch: `${tag}s` };
  const created: string[] = [];
  const remove = async () => {
    for (const n of created.splice(0).reverse()) await run('ip', ['netns', 'del', n], { allowFailure: true, timeoutMs: 10_000 });
  };
  /** A veth cable from (ns1, dev1) to (ns2, dev2). */
  const cable = async (ns1: string, dev1: string, ns2: string, dev2: string) => {
    await ip(['-n', ns1, 'link', 'add', dev1, 'type', 'veth', 'peer', 'name', dev2, 'netns', ns2]);
    await ip(['-n', ns1, 'link', 'set', dev1, 'up']);
    await ip(['-n', ns2, 'link', 'set', dev2, 'up']);
  };
  const addr = async (n: string, dev: string, cidr: string) => ip(['-n', n, 'addr', 'add', cidr, 'dev', dev]);
  const bridge = async (n: string, name: string) => {
    await ip(['-n', n, 'link', 'add', name, 'type', 'bridge']);
    await ip(['-n', n, 'link', 'set', name, 'up']);
  };
  const enslave = async (n: string, dev: string, br: string) => ip(['-n', n, 'link', 'set', dev, 'master', br]);
  const h = labHosts(ns);
  try {
    for (const n of Object.values(ns)) {
      await ip(['netns', 'add', n]);
      created.push(n);
      await ip(['-n', n, 'link', 'set', 'lo', 'up']);
    }
    await bridge(ns.switch, 'lan');
    await bridge(ns.switch, 'mgmt');
    for (const node of ['a', 'b'] as const) {
      const n = ns[node];
      // Guest LAN: the host's bridge with its tap, uplinked to the switch.
      await bridge(n, h.bridge);
      await ip(['-n', n, 'tuntap', 'add', h.taps[node], 'mode', 'tap']);
      await ip(['-n', n, 'link', 'set', h.taps[node], 'up']);
      await cable(n, 'up0', ns.switch, `lan-${node}`);
      await enslave(n, 'up0', h.bridge);
      await enslave(ns.switch, `lan-${node}`, 'lan');
      // Management / witness network.
      await cable(n, 'mg0', ns.switch, `mg-${node}`);
      await enslave(ns.switch, `mg-${node}`, 'mgmt');
      await addr(n, 'mg0', `${h.addr.mgmt[node]}/24`);
    }
    // Direct cables between the nodes.
    await cable(ns.a, 'rep0', ns.b, 'rep0');
    await addr(ns.a, 'rep0', `${h.addr.replication.a}/24`);
    await addr(ns.b, 'rep0', `${h.addr.replication.b}/24`);
    await cable(ns.a, 'hb0', ns.b, 'hb0');
    await addr(ns.a, 'hb0', `${h.addr.heartbeat.a}/24`);
    await addr(ns.b, 'hb0', `${h.addr.heartbeat.b}/24`);
    // The witness and the client.
    await cable(ns.witness, 'mg0', ns.switch, 'mg-w');
    await enslave(ns.switch, 'mg-w', 'mgmt');
    await addr(ns.witness, 'mg0', `${h.addr.mgmt.witness}/24`);
    await cable(ns.client, 'lan0', ns.switch, 'lan-c');
    await enslave(ns.switch, 'lan-c', 'lan');
    await addr(ns.client, 'lan0', `${h.addr.client}/24`);
  } catch (err) {
    await remove();
    throw err;
  }
  return h;
}
