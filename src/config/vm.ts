/**
 * The VM file for real hosts (`lockstep up -f vm.yaml`): the VM and the two
 * hosts that protect it, by the names of their host files. Where each host
 * listens (replication, heartbeat) is each host's own business (its host
 * file); `placeVm` joins the two into the config that one host's daemon
 * runs the VM with, its state under that host's stateDir. Pure.
 */
import path from 'node:path';
import { z } from 'zod';
import { configSchema, nodeName, port, qemuPathProblem } from './schema.js';
import { ConfigError, parseConfig, parseYamlFile, type ResolvedConfig } from './load.js';
import YAML from 'yaml';

const agentsSchema = configSchema.shape.agents.unwrap();

export const vmFileSchema = configSchema
  .omit({ nodes: true, stateDir: true, agents: true, ports: true })
  .extend({
    /** The two hosts, the primary first, as their host files name them. */
    hosts: z.tuple([nodeName, nodeName], { error: 'expected the two hosts, the primary first: [a, b]' }),
    /** The data plane's ports, the same on both hosts. Leave out: `up` takes a block free on both (and agents.port with it). */
    ports: configSchema.shape.ports.unwrap().optional(),
    /** The agents' tuning; their heartbeat paths come from the hosts' files, their secret is made by `up` when not given. */
    agents: agentsSchema.omit({ links: true }).partial({ secret: true }).strict().default({} as never),
  })
  .strict();

export type VmFile = z.output<typeof vmFileSchema>;

/**
 * The ports a VM takes on each of its hosts: COLO's data plane and its
 * agents' port. The same numbers on both hosts (either may be the primary).
 * Allocated as a block of PORT_BLOCK consecutive ports, in this order.
 */
export const portBlockSchema = z
  .object({ comparePrimary: port, mirror: port, compare: port, compareOut: port, migration: port, nbd: port, agents: port })
  .strict();
export type PortBlock = z.output<typeof portBlockSchema>;
export const PORT_BLOCK = 7;

export function portBlockAt(base: number): PortBlock {
  return { comparePrimary: base, mirror: base + 1, compare: base + 2, compareOut: base + 3, migration: base + 4, nbd: base + 5, agents: base + 6 };
}

/** The VM file's own ports (given by hand, or the defaults of a one-host pair). */
export function portsOfVmFile(v: VmFile): PortBlock {
  const p = v.ports ?? configSchema.shape.ports.parse(undefined);
  return { ...p, agents: v.agents.port };
}

export function portList(b: PortBlock): number[] {
  return Object.values(b);
}

/** A host's range of ports for its VMs and those its VMs hold already. */
export interface PortRange {
  first: number;
  last: number;
  used: number[];
}

/**
 * The lowest block of PORT_BLOCK consecutive ports inside every host's range
 * and used on none; undefined when there is none (the hosts are full).
 */
export function choosePortBlock(hosts: PortRange[]): PortBlock | undefined {
  const first = Math.max(...hosts.map((h) => h.first));
  const last = Math.min(...hosts.map((h) => h.last));
  const used = new Set(hosts.flatMap((h) => h.used));
  for (let base = first; base + PORT_BLOCK - 1 <= last; base++) {
    let clash = -1;
    for (let p = base; p < base + PORT_BLOCK; p++) if (used.has(p)) clash = p;
    if (clash < 0) return portBlockAt(base);
    base = clash; // the next block that can fit starts after the clash
  }
  return undefined;
}

/** What `placeVm` needs of each host: what its daemon says of its addresses. */
export interface HostAddresses {
  replication: string;
  heartbeat: string[];
}

/**
 * What a VM file's schema cannot say: its two hosts differ, every path in it
 * is absolute (a daemon cannot resolve paths relative to the user's
 * directory, and a relative one would resolve against the VM's state
 * directory), and a witness comes with a key. The same checks for a file
 * read here and for a definition a daemon receives.
 */
export function vmFileProblems(v: VmFile): string[] {
  const problems: string[] = [];
  if (v.hosts[0] === v.hosts[1]) problems.push(`hosts: the two hosts need different names (both are "${v.hosts[0]}")`);
  const paths: Array<[string, string | undefined]> = [
    ['vm.disk.image', v.vm.disk.image],
    ['vm.kernel', v.vm.kernel === 'demo' ? undefined : v.vm.kernel],
    ['vm.initrd', v.vm.initrd],
    ['qemu.binary', v.qemu.binary],
    ['replication.bufferDir', v.replication.bufferDir],
  ];
  for (const [field, p] of paths) {
    if (p === undefined) continue;
    if (!path.isAbsolute(p)) problems.push(`${field}: "${p}" must be an absolute path (it is a path on the hosts, not here)`);
    else if (path.normalize(p) !== p && path.normalize(p) !== p.replace(/\/+$/, '')) problems.push(`${field}: "${p}" must be a plain absolute path (no "..", ".", or "//")`);
    const why = qemuPathProblem(p);
    if (why) problems.push(`${field}: "${p}" ${why}`);
  }
  if (v.agents.witness && !v.agents.secret && !v.agents.witnessKey) {
    problems.push("agents.witnessKey: needed with agents.witness (lockstep witness-key NAME prints this VM's key), or agents.secret the same as the witness's");
  }
  return problems;
}

/** A VM file checked (vmFileProblems): every path in it absolute. */
export function parseVmFile(text: string, file: string): VmFile {
  const v = parseYamlFile(vmFileSchema, text, file, 'examples/two-hosts.yaml');
  const problems = vmFileProblems(v);
  if (problems.length) throw new ConfigError(file, problems, 'examples/two-hosts.yaml');
  return v;
}

/**
 * The config host `me` runs VM `v` with: the nodes are the two hosts at
 * their replication addresses, the heartbeat paths theirs (paired in
 * order, as many as both have), the state in `<stateDir>/vms/<name>`.
 */
export function placeVm(
  v: VmFile,
  hosts: Record<string, HostAddresses>,
  me: string,
  stateDir: string,
  secret: string,
  o: { ports?: PortBlock; tap?: string; qemuBinary?: string } = {},
): ResolvedConfig {
  const ports = o.ports ?? portsOfVmFile(v);
  const [p, s] = v.hosts;
  const ha = hosts[p];
  const hb = hosts[s];
  if (!ha || !hb) throw new ConfigError(`VM "${v.name}"`, [`the addresses of host "${!ha ? p : s}" are not known`]);
  if (me !== p && me !== s) throw new ConfigError(`VM "${v.name}"`, [`this host (${me}) is not one of the VM's hosts (${p}, ${s})`]);
  const paths = Math.min(ha.heartbeat.length, hb.heartbeat.length);
  const vmDir = path.join(stateDir, 'vms', v.name);
  const { agents: agentsPort, ...colo } = ports;
  const net = v.vm.network;
  let vm = v.vm;
  if (net.mode === 'tap') {
    // This host's tap: the VM file's, else the one its daemon made. The other host's is that host's business (it may
    // have the same name): ours stands in for it where the config wants one per node, and is never used for it here.
    const mine = net.taps[me] ?? o.tap;
    if (!mine) throw new ConfigError(`VM "${v.name}"`, [`vm.network.taps: no tap for host "${me}", and none made for it`]);
    vm = { ...v.vm, network: { ...net, taps: { [p]: net.taps[p] ?? mine, [s]: net.taps[s] ?? mine, [me]: mine } } };
  }
  const doc = {
    ...v,
    vm,
    // The VM file's QEMU, else this host's (its host file's qemu.binary).
    qemu: { ...v.qemu, binary: v.qemu.binary ?? o.qemuBinary },
    hosts: undefined,
    ports: colo,
    stateDir: vmDir,
    nodes: [
      { name: p, address: ha.replication, dataDir: path.join(vmDir, p) },
      { name: s, address: hb.replication, dataDir: path.join(vmDir, s) },
    ],
    agents: { ...v.agents, port: agentsPort, secret, links: { [p]: ha.heartbeat.slice(0, paths), [s]: hb.heartbeat.slice(0, paths) } },
  };
  delete (doc as { hosts?: unknown }).hosts;
  // Through the one-host config's checks (ports, links, ...), as if it had been written by hand.
  return parseConfig(YAML.stringify(doc), path.join(vmDir, 'vm.yaml'), { separateHosts: true });
}
