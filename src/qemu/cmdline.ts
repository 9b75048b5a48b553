/**
 * QEMU command lines for the two COLO roles, following the topology of the
 * COLO documentation ("Startup qemu", steps 1 and 2) and the block
 * replication design: quorum over the local disk on both sides, the
 * replication driver with active/hidden buffers on the secondary, NBD for the
 * primary's writes, and the COLO proxy (filter-mirror, filter-redirector,
 * filter-rewriter, colo-compare on an iothread).
 *
 * Safety is built in rather than documented: a tap netdev always gets
 * vnet_hdr=off (with the vnet header on, colo-compare releases primary
 * packets the secondary never saw and acknowledged writes are lost on
 * failover), vhost=off (vhost bypasses the filters) and no scripts.
 */
import { LockstepError } from '../util/errors.js';

/** Object and chardev ids, as in the COLO documentation (its QMP procedures refer to them). */
export const IDS = {
  netdev: 'hn0',
  nic: 'e0',
  disk: 'colo-disk0',
  blockDevice: 'blk0',
  secondaryParent: 'parent0',
  secondaryChild: 'childs0',
  replicationNode: 'replication0',
  mirrorChardev: 'mirror0',
  compare1: 'compare1',
  compare0: 'compare0',
  compare0Client: 'compare0-0',
  compareOut: 'compare_out',
  compareOutClient: 'compare_out0',
  filterMirror: 'm0',
  redirectorIn: 'redire0',
  redirectorOut: 'redire1',
  iothread: 'iothread1',
  compare: 'comp0',
  secRedirectorIn: 'f1',
  secRedirectorOut: 'f2',
  rewriter: 'rew0',
  secChardevIn: 'red0',
  secChardevOut: 'red1',
  /** TLS credentials of the data plane: the side that listens (incoming migration, NBD export, the proxy's listening sockets)... */
  tlsServer: 'lstls-server',
  /** ... and the side that connects (outgoing migration, the NBD client, the secondary's proxy sockets). */
  tlsClient: 'lstls-client',
} as const;

/** The chardev ids of the QMP monitors: lsqmp0, lsqmp1. */
export const QMP_CHARDEV_PREFIX = 'lsqmp';

/** The PSK identity both ends of a pair use (keys.psk holds "lockstep:HEXKEY"). */
export const TLS_PSK_USERNAME = 'lockstep';

export interface HostForward {
  proto?: 'tcp' | 'udp';
  hostAddr: string;
  hostPort: number;
  guestPort: number;
}

export type NicSpec =
  | { mode: 'user'; forwards: HostForward[] }
  | { mode: 'tap'; ifname: string };

export interface MachineSpec {
  name: string;
  accel: 'kvm' | 'tcg';
  memoryMiB: number;
  cpus: number;
  /** Direct kernel boot; otherwise the disk boots. */
  kernel?: string;
  initrd?: string;
  append?: string;
  /** -L firmware directories (builds without blobs need them). */
  dataDirs?: string[];
  serialLog: string;
  /** QMP unix sockets; lockstep uses one for control and keeps one spare for re-attachment. */
  qmpSockets: string[];
  nic: NicSpec;
  /** The NIC's MAC address (QEMU's default when absent: the same for every VM). */
  mac?: string;
}

/** TCP endpoints of the COLO proxy, migration and NBD, as in the documentation's test procedure. */
export interface ColoEndpoints {
  /** Where the primary listens for the secondary (mirror0, compare1). */
  primaryHost: string;
  /** Where the secondary listens (migration, NBD). */
  secondaryHost: string;
  /**
   * Primary-local loopback for the compare/redirect chardev pairs, when they are TCP (`localSockets` absent: a
   * record of an earlier version; the chardevs a takeover adds, until its procedure uses localProxyAddress).
   */
  primaryLocal: string;
  /**
   * The primary's local compare/redirect chardev pairs as unix sockets in the primary's own directory (0700):
   * no TCP port on loopback that a local process could connect to before QEMU's own client does.
   */
  localSockets?: { compare0: string; compareOut: string };
  mirrorPort: number; // 9003
  compareSecondaryPort: number; // 9004
  comparePrimaryPort: number; // 9001
  compareOutPort: number; // 9005
  migrationPort: number; // 9998
  nbdPort: number; // 9999
  /** Use reconnect-ms (QEMU ≥ 9.2) instead of reconnect (seconds). */
  reconnectMs: boolean;
  /** colo-compare's compare_timeout in ms (QEMU default 3000). */
  compareTimeoutMs?: number;
  /** colo-compare's expired_scan_cycle in ms (QEMU default 1000): how often it looks for packets held that long. */
  compareScanMs?: number;
  /**
   * The data plane's TLS: every connection between the two hosts (migration,
   * NBD, mirror0, compare1) runs TLS with the pair's pre-shared key, read by
   * QEMU from `dir` (keys.psk, dh-params.pem). Absent: plain TCP, which
   * anyone who reaches the ports can read (the VM's memory, its network
   * traffic) and write (the secondary's disk, the state it loads).
   */
  tls?: { dir: string };
}

export interface PrimaryDisk {
  image: string;
  format: 'qcow2' | 'raw';
}

export interface SecondaryDisks {
  /** The replica of the primary's disk (the NBD export target). */
  parent: string;
  parentFormat: 'qcow2' | 'raw';
  /** Buffers for the secondary's own writes and the hidden copy-on-write data: qcow2, on a RAM disk ideally. */
  active: string;
  hidden: string;
}

/** One -opt value list: key=value pairs joined by commas, commas in values doubled. */
export function opts(head: string | undefined, kv: Record<string, string | number | boolean | undefined>): string {
  const parts: string[] = head === undefined ? [] : [head];
  for (const [k, v] of Object.entries(kv)) {
    if (v === undefined) continue;
    const s = typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
    parts.push(`${k}=${s.replaceAll(',', ',,')}`);
  }
  return parts.join(',');
}

function reconnect(e: ColoEndpoints): Record<string, number> {
  return e.reconnectMs ? { 'reconnect-ms': 1000 } : { reconnect: 1 };
}

/** The netdev for a role. The only place taps are described: vnet_hdr=off is not optional. */
export function netdevArg(nic: NicSpec, withForwards: boolean): string {
  if (nic.mode === 'user') {
    const fw = withForwards
      ? nic.forwards.map((f) => `hostfwd=${f.proto ?? 'tcp'}:${f.hostAddr}:${f.hostPort}-:${f.guestPort}`)
      : [];
    return [opts('user', { id: IDS.netdev }), ...fw].join(',');
  }
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(nic.ifname)) {
    throw new LockstepError(`invalid tap interface name "${nic.ifname}"`, { hint: 'up to 15 letters, digits, "_", "." or "-"' });
  }
  return opts('tap', { id: IDS.netdev, ifname: nic.ifname, script: 'no', downscript: 'no', vhost: false, vnet_hdr: false });
}

function common(m: MachineSpec): string[] {
  const a: string[] = [];
  a.push('-name', opts(m.name, { 'debug-threads': true }));
  // Timestamps on QEMU's own messages, so its log lines can be put beside the agents' and QMP events.
  a.push('-msg', 'timestamp=on');
  if (m.accel === 'kvm') a.push('-accel', 'kvm', '-cpu', 'qemu64,kvmclock=on');
  else a.push('-accel', 'tcg');
  a.push('-m', String(m.memoryMiB), '-smp', String(m.cpus), '-nodefaults', '-display', 'none');
  for (const d of m.dataDirs ?? []) a.push('-L', d);
  a.push('-serial', `file:${m.serialLog}`);
  // Each QMP monitor as a chardev whose path is a value (commas in it doubled), never -qmp's unix: shorthand, whose
  // head QEMU parses as options (qemu_chr_parse_compat: a comma in the path would begin another option).
  m.qmpSockets.forEach((s, i) => a.push('-chardev', opts('socket', { id: `${QMP_CHARDEV_PREFIX}${i}`, path: s, server: true, wait: false }), '-mon', opts(undefined, { chardev: `${QMP_CHARDEV_PREFIX}${i}`, mode: 'control' })));
  if (m.kernel) {
    a.push('-kernel', m.kernel);
    if (m.initrd) a.push('-initrd', m.initrd);
    a.push('-append', m.append ?? 'console=ttyS0 quiet');
  }
  return a;
}

function nicDevice(mac: string | undefined): string[] {
  return ['-device', opts('virtio-net-pci', { id: IDS.nic, netdev: IDS.netdev, ...(mac ? { mac } : {}) })];
}

function socketChardev(id: string, host: string, port: number, extra: Record<string, string | number | boolean>): string[] {
  return ['-chardev', opts('socket', { id, host, port, ...extra })];
}

/**
 * Where the primary's local chardev pair `which` meets, as QMP's
 * SocketAddressLegacy (chardev-add): the unix socket of `localSockets`, else
 * TCP on `primaryLocal`. The only description of those sockets besides the
 * command line, for a procedure that adds them (a takeover).
 */
export function localProxyAddress(e: ColoEndpoints, which: 'compare0' | 'compareOut'): { type: 'unix'; data: { path: string } } | { type: 'inet'; data: { host: string; port: string } } {
  if (e.localSockets) return { type: 'unix', data: { path: e.localSockets[which] } };
  return { type: 'inet', data: { host: e.primaryLocal, port: String(which === 'compare0' ? e.comparePrimaryPort : e.compareOutPort) } };
}

/** A chardev of the primary's local pair `which` (server or client end). */
function localChardev(e: ColoEndpoints, id: string, which: 'compare0' | 'compareOut', extra: Record<string, string | number | boolean>): string[] {
  if (e.localSockets) return ['-chardev', opts('socket', { id, path: e.localSockets[which], ...extra })];
  return socketChardev(id, e.primaryLocal, which === 'compare0' ? e.comparePrimaryPort : e.compareOutPort, extra);
}

/**
 * The TLS credentials a socket between the two hosts uses, by the side it
 * plays: the only way the command lines and the QMP procedures name them,
 * so a link to the peer cannot be made without TLS when the pair has it.
 */
export function peerTlsCreds(e: Pick<ColoEndpoints, 'tls'>, side: 'server' | 'client'): { 'tls-creds': string } | Record<string, never> {
  if (!e.tls) return {};
  return { 'tls-creds': side === 'server' ? IDS.tlsServer : IDS.tlsClient };
}

/** A chardev socket to or from the peer host (never a primary-local one). */
function peerChardev(e: ColoEndpoints, id: string, host: string, port: number, extra: Record<string, string | number | boolean>): string[] {
  const side = extra.server === true ? 'server' : 'client';
  return socketChardev(id, host, port, { ...extra, ...peerTlsCreds(e, side) });
}

/** Both TLS credential objects (a node listens and connects in either role over its life), pre-shared key in e.tls.dir. */
function tlsObjects(e: ColoEndpoints): string[] {
  if (!e.tls) return [];
  const dir = e.tls.dir;
  return [
    '-object', opts('tls-creds-psk', { id: IDS.tlsServer, endpoint: 'server', dir }),
    '-object', opts('tls-creds-psk', { id: IDS.tlsClient, endpoint: 'client', dir, username: TLS_PSK_USERNAME }),
  ];
}

/**
 * The primary ("Startup qemu", step 1). It starts paused (-S) and blocks in
 * compare1 (wait=on) until the secondary connects.
 *
 * `alone`: the same VM without a secondary, as a primary is after "Primary
 * Failover" (a restart after the whole pair died): no proxy objects, no
 * waiting; the chardevs are there for a later resume replication.
 */
export function primaryArgs(m: MachineSpec, e: ColoEndpoints, disk: PrimaryDisk, o: { alone?: boolean } = {}): string[] {
  const a = common(m);
  a.push(...tlsObjects(e));
  a.push('-netdev', netdevArg(m.nic, true), ...nicDevice(m.mac));
  a.push(
    ...peerChardev(e, IDS.mirrorChardev, e.primaryHost, e.mirrorPort, { server: true, wait: false }),
    ...peerChardev(e, IDS.compare1, e.primaryHost, e.compareSecondaryPort, { server: true, wait: !o.alone }),
    ...localChardev(e, IDS.compare0, 'compare0', { server: true, wait: false }),
    ...localChardev(e, IDS.compare0Client, 'compare0', {}),
    ...localChardev(e, IDS.compareOut, 'compareOut', { server: true, wait: false }),
    ...localChardev(e, IDS.compareOutClient, 'compareOut', {}),
  );
  if (!o.alone) a.push(...primaryProxyObjects(e).flatMap((x) => ['-object', x]));
  a.push(
    '-drive',
    opts('if=none', {
      id: IDS.disk,
      driver: 'quorum',
      'read-pattern': 'fifo',
      'vote-threshold': 1,
      'children.0.file.filename': disk.image,
      'children.0.driver': disk.format,
    }),
    '-device',
    opts('virtio-blk-pci', { id: IDS.blockDevice, drive: IDS.disk }),
    '-S',
  );
  return a;
}

/** A QOM object: its type and properties, for -object or QMP object-add. */
export interface ObjectSpec {
  qomType: string;
  props: Record<string, string | number | undefined>;
}

/** The primary's COLO proxy objects, in creation order (also created by resume replication, with object-add). */
export function primaryProxyObjectSpecs(e: ColoEndpoints): ObjectSpec[] {
  return [
    { qomType: 'filter-mirror', props: { id: IDS.filterMirror, netdev: IDS.netdev, queue: 'tx', outdev: IDS.mirrorChardev } },
    { qomType: 'filter-redirector', props: { netdev: IDS.netdev, id: IDS.redirectorIn, queue: 'rx', indev: IDS.compareOut } },
    { qomType: 'filter-redirector', props: { netdev: IDS.netdev, id: IDS.redirectorOut, queue: 'rx', outdev: IDS.compare0 } },
    { qomType: 'iothread', props: { id: IDS.iothread } },
    {
      qomType: 'colo-compare',
      props: {
        id: IDS.compare,
        primary_in: IDS.compare0Client,
        secondary_in: IDS.compare1,
        outdev: IDS.compareOutClient,
        iothread: IDS.iothread,
        compare_timeout: e.compareTimeoutMs,
        expired_scan_cycle: e.compareScanMs,
      },
    },
  ];
}

/** The primary's COLO proxy objects as -object arguments. */
export function primaryProxyObjects(e: ColoEndpoints): string[] {
  return primaryProxyObjectSpecs(e).map((o) => opts(o.qomType, o.props));
}

/** The secondary ("Startup qemu", step 2): waits for the incoming migration. */
export function secondaryArgs(m: MachineSpec, e: ColoEndpoints, d: SecondaryDisks): string[] {
  const a = common(m);
  a.push(...tlsObjects(e));
  // The secondary's own netdev sees no traffic while in COLO; forwards are added at failover.
  a.push('-netdev', netdevArg(m.nic, false), ...nicDevice(m.mac));
  a.push(
    ...peerChardev(e, IDS.secChardevIn, e.primaryHost, e.mirrorPort, reconnect(e)),
    ...peerChardev(e, IDS.secChardevOut, e.primaryHost, e.compareSecondaryPort, reconnect(e)),
    '-object', opts('filter-redirector', { id: IDS.secRedirectorIn, netdev: IDS.netdev, queue: 'tx', indev: IDS.secChardevIn }),
    '-object', opts('filter-redirector', { id: IDS.secRedirectorOut, netdev: IDS.netdev, queue: 'rx', outdev: IDS.secChardevOut }),
    '-object', opts('filter-rewriter', { id: IDS.rewriter, netdev: IDS.netdev, queue: 'all' }),
  );
  a.push(
    '-drive',
    opts('if=none', { id: IDS.secondaryParent, 'file.filename': d.parent, driver: d.parentFormat }),
    '-drive',
    opts('if=none', {
      id: IDS.secondaryChild,
      driver: 'replication',
      mode: 'secondary',
      'file.driver': 'qcow2',
      'top-id': IDS.disk,
      'file.file.filename': d.active,
      'file.backing.driver': 'qcow2',
      'file.backing.file.filename': d.hidden,
      'file.backing.backing': IDS.secondaryParent,
    }),
    '-drive',
    opts('if=none', { id: IDS.disk, driver: 'quorum', 'read-pattern': 'fifo', 'vote-threshold': 1, 'children.0': IDS.secondaryChild }),
    '-device',
    opts('virtio-blk-pci', { id: IDS.blockDevice, drive: IDS.disk }),
    // The incoming migration's TLS is set before QEMU listens: no stream can arrive in the clear first.
    ...(e.tls ? ['-global', `migration.tls-creds=${IDS.tlsServer}`] : []),
    '-incoming',
    `tcp:${e.secondaryHost}:${e.migrationPort}`,
  );
  return a;
}

/** A plain, unprotected VM with the same machine and disk (for comparisons). */
export function plainArgs(m: MachineSpec, disk: PrimaryDisk): string[] {
  const a = common(m);
  a.push('-netdev', netdevArg(m.nic, true), ...nicDevice(m.mac));
  a.push('-drive', opts('if=none', { id: IDS.disk, file: disk.image, driver: disk.format }), '-device', opts('virtio-blk-pci', { id: IDS.blockDevice, drive: IDS.disk }));
  return a;
}
