/**
 * From a config to concrete QEMU invocations: which node is primary, where
 * each file and socket lives, which ports and addresses. Pure: no processes,
 * no I/O, so it can be checked in unit tests.
 */
import crypto from 'node:crypto';
import path from 'node:path';
import type { ResolvedConfig } from '../config/load.js';
import type { TapPlace } from '../qemu/tap.js';
import { dataPlaneTlsDir } from './keys.js';
import { LockstepError } from '../util/errors.js';
import { primaryArgs, secondaryArgs, type ColoEndpoints, type HostForward, type MachineSpec, type NicSpec } from '../qemu/cmdline.js';

export interface Runtime {
  binary: string;
  accel: 'kvm' | 'tcg';
  dataDirs: string[];
  /** Resolved kernel/initrd (for "demo", the demo guest's). */
  kernel?: string;
  initrd?: string;
  reconnectMs: boolean;
}

export interface NodePlan {
  name: string;
  role: 'primary' | 'secondary';
  address: string;
  dataDir: string;
  qmpSocket: string;
  /** A second QMP monitor, for a second client (status while a controller holds the first). */
  qmpSocket2: string;
  serialLog: string;
  qemuLog: string;
  /** The disk this node's VM uses: the user's image on the primary, the replica on the secondary. */
  disk: string;
  args: string[];
  netns?: string;
  /** Bridge mode: this node's tap. */
  tap?: TapPlace;
  /** The unix sockets of its own QEMU's local chardevs (the primary's compare pairs), removed before it starts. */
  localSockets: string[];
}

export interface PairPlan {
  name: string;
  endpoints: ColoEndpoints;
  forwards: HostForward[];
  primary: NodePlan;
  secondary: NodePlan;
  buffers: { active: string; hidden: string };
  diskFormat: 'qcow2' | 'raw';
  kernel?: string;
  initrd?: string;
}

export function replicaPath(c: ResolvedConfig, node: ResolvedConfig['nodes'][number]): string {
  return path.join(node.dataDir, `replica.${c.vm.disk.format}`);
}

/**
 * The plan for `c`: the first node of the config is the primary, unless
 * `primary` names the other (a resync after a takeover). `alone`: the
 * primary restarts by itself from `alone.disk` (the node's newest disk)
 * after the whole pair died.
 */
/**
 * The MAC address of VM `name` unless its config gives one: QEMU's prefix
 * 52:54:00 (locally administered, unicast) and three bytes of a hash of the
 * name, so that both nodes of a pair give the VM the same address and VMs of
 * different names on one LAN (almost always) differ.
 */
export function vmMac(name: string): string {
  const h = crypto.createHash('sha256').update(`lockstep mac|${name}`).digest();
  return ['52', '54', '00', ...[...h.subarray(0, 3)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** The longest path of a unix socket (sun_path holds 108 bytes with its NUL). */
export const UNIX_PATH_MAX = 107;

/**
 * Where a pair's secondary keeps its active and hidden buffers: a directory
 * of their own in bufferDir, which resync and up make 0700 and exclusively
 * (pair/buffers.ts), so that nobody else on the host can read, plant or
 * replace them, even in a world-writable bufferDir such as /dev/shm. Its
 * name ends with a tag derived from the agents' secret, which no other user
 * of the host can read: nobody can make a directory of that name before
 * lockstep does (it would be refused, and the secondary could not start),
 * and lockstep keeps it once made. A pair without agents (one machine, no
 * secret) gets the name without a tag.
 */
export function bufferDirOf(c: ResolvedConfig, secondary: string): string {
  const tag = c.agents ? `-${crypto.createHmac('sha256', c.agents.secret).update(`lockstep buffers|${c.name}|${secondary}`).digest('hex').slice(0, 16)}` : '';
  return path.join(c.replication.bufferDir, `lockstep-${c.name}-${secondary}${tag}`);
}

/** The primary's local proxy sockets, in its private data directory (whoever the primary is: also a survivor's). */
export function localSocketsIn(dataDir: string): { compare0: string; compareOut: string } {
  return { compare0: path.join(dataDir, 'compare0.sock'), compareOut: path.join(dataDir, 'compare-out.sock') };
}

export function planPair(c: ResolvedConfig, rt: Runtime, primary: string = c.nodes[0]!.name, o: { alone?: { disk: string } } = {}): PairPlan {
  const [first, second] = c.nodes as [ResolvedConfig['nodes'][number], ResolvedConfig['nodes'][number]];
  const [p, s] = first.name === primary ? [first, second] : [second, first];
  const tlsDir = dataPlaneTlsDir(c);
  const localSockets = localSocketsIn(p.dataDir);
  for (const sock of [...Object.values(localSockets), path.join(p.dataDir, 'qmp2.sock'), path.join(s.dataDir, 'qmp2.sock')]) {
    if (Buffer.byteLength(sock) > UNIX_PATH_MAX) {
      throw new LockstepError(`the unix socket ${sock} would be longer than ${UNIX_PATH_MAX} bytes, the most a socket path may be`, { hint: 'give the VM a shorter stateDir (or nodes[].dataDir)' });
    }
  }
  const e: ColoEndpoints = {
    primaryHost: p.address,
    secondaryHost: s.address,
    primaryLocal: '127.0.0.1',
    comparePrimaryPort: c.ports.comparePrimary,
    mirrorPort: c.ports.mirror,
    compareSecondaryPort: c.ports.compare,
    compareOutPort: c.ports.compareOut,
    migrationPort: c.ports.migration,
    nbdPort: c.ports.nbd,
    reconnectMs: rt.reconnectMs,
    compareTimeoutMs: c.replication.compareTimeoutMs,
    compareScanMs: c.replication.compareScanMs,
    localSockets,
    ...(tlsDir ? { tls: { dir: tlsDir } } : {}),
  };
  const net = c.vm.network;
  const forwards: HostForward[] = net.mode === 'user' ? net.forwards.map((f) => ({ proto: f.proto, hostAddr: f.host, hostPort: f.port, guestPort: f.guestPort })) : [];
  const nic = (nodeName: string): NicSpec => (net.mode === 'user' ? { mode: 'user', forwards } : { mode: 'tap', ifname: net.taps[nodeName]! });
  const bufferDir = bufferDirOf(c, s.name);
  const buffers = { active: path.join(bufferDir, 'active.qcow2'), hidden: path.join(bufferDir, 'hidden.qcow2') };
  const machine = (n: ResolvedConfig['nodes'][number], role: 'primary' | 'secondary'): MachineSpec => ({
    name: `${c.name}-${n.name}`,
    accel: rt.accel,
    memoryMiB: Math.round(c.vm.memory / (1024 * 1024)),
    cpus: c.vm.cpus,
    kernel: rt.kernel,
    initrd: rt.initrd,
    append: c.vm.append ?? (rt.kernel ? 'console=ttyS0 quiet' : undefined),
    dataDirs: rt.dataDirs,
    serialLog: path.join(n.dataDir, 'serial.log'),
    qmpSockets: [path.join(n.dataDir, 'qmp.sock'), path.join(n.dataDir, 'qmp2.sock')],
    nic: nic(n.name),
    mac: net.mac ?? vmMac(c.name),
  });
  const node = (n: ResolvedConfig['nodes'][number], role: 'primary' | 'secondary', disk: string, args: string[]): NodePlan => ({
    name: n.name,
    role,
    address: n.address,
    dataDir: n.dataDir,
    qmpSocket: path.join(n.dataDir, 'qmp.sock'),
    qmpSocket2: path.join(n.dataDir, 'qmp2.sock'),
    serialLog: path.join(n.dataDir, 'serial.log'),
    qemuLog: path.join(n.dataDir, 'qemu.log'),
    disk,
    args,
    netns: n.netns,
    tap: net.mode === 'tap' ? { tap: net.taps[n.name]!, bridge: net.bridge, netns: n.netns } : undefined,
    localSockets: role === 'primary' ? [localSockets.compare0, localSockets.compareOut] : [],
  });
  const replica = replicaPath(c, s);
  const primaryDisk = o.alone?.disk ?? c.vm.disk.image;
  return {
    name: c.name,
    endpoints: e,
    forwards,
    primary: node(p, 'primary', primaryDisk, primaryArgs(machine(p, 'primary'), e, { image: primaryDisk, format: c.vm.disk.format }, { alone: o.alone !== undefined })),
    secondary: node(
      s,
      'secondary',
      replica,
      secondaryArgs(machine(s, 'secondary'), e, { parent: replica, parentFormat: c.vm.disk.format, active: buffers.active, hidden: buffers.hidden }),
    ),
    buffers,
    diskFormat: c.vm.disk.format,
    kernel: rt.kernel,
    initrd: rt.initrd,
  };
}
