/**
 * What `lockstep up` leaves for `status` and `down`: the PIDs, sockets and
 * files of both nodes. Written like the other records that must survive a
 * power loss (write, fsync, rename, fsync of the directory): a reader sees
 * the old file or the new one, never half of one, before or after a crash.
 * Every write, and every read-modify-write, holds the file's lock
 * (state.json.lock): the agents, the CLI and a daemon share it.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { NodePlan, PairPlan, Runtime } from './plan.js';
import type { ResolvedConfig } from '../config/load.js';
import type { ColoEndpoints, HostForward } from '../qemu/cmdline.js';
import type { TapPlace } from '../qemu/tap.js';
import { isOurQemu } from '../qemu/process.js';
import { withFileLock, writeFileAtomic, type AtomicWriteFs } from '../util/files.js';

export interface NodeState {
  name: string;
  role: 'primary' | 'secondary';
  address: string;
  pid: number;
  qmpSocket: string;
  qmpSocket2: string;
  serialLog: string;
  qemuLog: string;
  disk: string;
  netns?: string;
  tap?: TapPlace;
}

export interface PairState {
  version: 1;
  name: string;
  configFile: string;
  runtime: Runtime;
  endpoints: ColoEndpoints;
  forwards: HostForward[];
  buffers: { active: string; hidden: string };
  nodes: NodeState[];
  startedAt: string;
  /** When both nodes first reported COLO running. */
  protectedAt?: string;
  upMs?: number;
  stoppedAt?: string;
  /** PIDs of the node agents (lockstep agent), when the config has agents. */
  agents?: Record<string, number>;
  /** The last restart of the VM alone, after the whole pair had died. */
  lastRestart?: { at: string; node: string; disk: string };
  /** Buffers of earlier secondaries, still open in a survivor's QEMU after a resync; `down` removes them. */
  retiredBuffers?: string[];
  /** The last resync: from the survivor to the new secondary, its times and size. */
  lastResync?: { at: string; from: string; to: string; ms: number; mirrorMs: number; mirrorBytes: number; stoppedMs: number };
  /** The last takeover: who died, who carries the VM on, why. */
  /** ms: the failover procedure; sinceCheckpointMs: from the VM's last checkpoint to the decision (agents only). */
  lastFailover?: { at: string; from: string; to: string; reason: string; ms: number; sinceCheckpointMs?: number };
  /**
   * The disk that holds the newest data. `up` starts from the config's image;
   * after a failover to the secondary it is the survivor's replica, and `up`
   * refuses to copy the older image over it.
   */
  authoritativeDisk?: string;
  /** Bridge mode with vm.network.announce off: no announce-self after a takeover (absent: announce). */
  announce?: false;
}

/** A node of the state file from its plan and its QEMU's pid. */
export function nodeStateOf(n: NodePlan, pid: number): NodeState {
  return { name: n.name, role: n.role, address: n.address, pid, qmpSocket: n.qmpSocket, qmpSocket2: n.qmpSocket2, serialLog: n.serialLog, qemuLog: n.qemuLog, disk: n.disk, netns: n.netns, tap: n.tap };
}

/** A new pair's record: its runtime, endpoints, buffers and nodes, as planned. */
export function newPairState(c: ResolvedConfig, runtime: Runtime, plan: PairPlan, nodes: NodeState[], startedAt: Date): PairState {
  const net = c.vm.network;
  return {
    version: 1,
    name: c.name,
    configFile: c.file,
    runtime,
    endpoints: plan.endpoints,
    forwards: plan.forwards,
    buffers: plan.buffers,
    nodes,
    startedAt: startedAt.toISOString(),
    ...(net.mode === 'tap' && !net.announce ? { announce: false as const } : {}),
  };
}

export function stateFile(stateDir: string): string {
  return path.join(stateDir, 'state.json');
}

export function readState(stateDir: string): PairState | undefined {
  try {
    return JSON.parse(fs.readFileSync(stateFile(stateDir), 'utf8')) as PairState;
  } catch {
    return undefined;
  }
}

function writeUnlocked(stateDir: string, s: PairState, o: { fs?: AtomicWriteFs } = {}): void {
  writeFileAtomic(stateFile(stateDir), JSON.stringify(s, null, 2) + '\n', { durable: true, ...(o.fs ? { fs: o.fs } : {}) });
}

function locked<T>(stateDir: string, fn: () => T): T {
  return withFileLock(`${stateFile(stateDir)}.lock`, fn);
}

export function writeState(stateDir: string, s: PairState, o: { fs?: AtomicWriteFs } = {}): void {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  locked(stateDir, () => writeUnlocked(stateDir, s, o));
}

/** Read-modify-write of the state file (the agents and the CLI share it), under its lock. */
export function updateState(stateDir: string, fn: (s: PairState) => PairState): PairState | undefined {
  return locked(stateDir, () => {
    const s = readState(stateDir);
    if (!s) return undefined;
    const next = fn(s);
    writeUnlocked(stateDir, next);
    return next;
  });
}

/** Records a takeover: the survivor is now the (unprotected) primary and its disk the newest data. */
export function recordFailover(stateDir: string, f: { from: string; to: string; reason: string; ms: number; sinceCheckpointMs?: number }): PairState | undefined {
  return updateState(stateDir, (s) => ({
    ...s,
    // The lost node is the one to re-protect the VM with, as a secondary, once it is back.
    nodes: s.nodes.map((n) => ({ ...n, role: n.name === f.to ? ('primary' as const) : ('secondary' as const) })),
    lastFailover: { at: new Date().toISOString(), ...f },
    authoritativeDisk: s.nodes.find((n) => n.name === f.to)?.disk,
  }));
}

/**
 * Records the QEMU this node now runs, and its role (the other node then
 * holds the other role). Each host's own record must know its own QEMU: on
 * separate hosts nobody else writes it, and an agent restarted on a record
 * without it would take its running VM for gone.
 */
export function recordOwnQemu(
  stateDir: string,
  node: string,
  q: { pid: number; role: 'primary' | 'secondary'; disk: string; serialLog: string; qemuLog: string },
): PairState | undefined {
  const other = q.role === 'primary' ? ('secondary' as const) : ('primary' as const);
  // The disk too: a new secondary's is a new replica, and a later restart from "our disk" must take that one.
  return updateState(stateDir, (s) => ({ ...s, nodes: s.nodes.map((n) => (n.name === node ? { ...n, ...q } : { ...n, role: other })) }));
}

/** The nodes of a state file whose QEMU still runs. */
export function liveNodes(s: PairState): NodeState[] {
  return s.nodes.filter((n) => isOurQemu(n.pid, n.qmpSocket));
}
