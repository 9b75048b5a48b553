/**
 * Starting one node's QEMU from its plan: in the node's network namespace,
 * logging to its qemu.log, and connecting to its first QMP monitor. `up`
 * starts both nodes this way; a resync starts a new secondary, a restart a
 * primary alone.
 */
import fs from 'node:fs';
import { QmpClient, type QmpEvent } from '../qmp/client.js';
import { QemuProcess, connectStartingQemu } from '../qemu/process.js';
import { ensurePrivateDir } from '../util/files.js';
import type { NodePlan } from './plan.js';

/** Waits for a starting QEMU's QMP socket and connects, recording every event; says so if the QEMU exits meanwhile. */
export async function connectQmp(proc: QemuProcess, node: NodePlan, timeoutMs: number): Promise<{ qmp: QmpClient; events: QmpEvent[] }> {
  const qmp = await connectStartingQemu(proc, node.qmpSocket, { timeoutMs, what: `the ${node.role} (${node.name}) while starting` });
  const events: QmpEvent[] = [];
  qmp.on('event', (e) => events.push(e));
  return { qmp, events };
}

/** How to run a node's QEMU: its arguments, inside its network namespace if it has one. */
export function spawnOpts(n: NodePlan): { args: string[]; wrapper?: string[] } {
  return { args: n.args, wrapper: n.netns ? ['ip', 'netns', 'exec', n.netns] : undefined };
}

/**
 * Starts a node's QEMU detached (it outlives this process; it is ended by
 * PID) after removing the QMP sockets of an earlier one, and connects to its
 * first monitor. If it cannot be reached, it is ended again.
 */
export async function launchNode(n: NodePlan, binary: string, name: string): Promise<{ proc: QemuProcess; qmp: QmpClient }> {
  // Its sockets (QMP, the primary's local chardevs) live in its own directory, which only lockstep's user may enter.
  ensurePrivateDir(n.dataDir, { parents: true });
  for (const f of [n.qmpSocket, n.qmpSocket2, ...(n.localSockets ?? [])]) fs.rmSync(f, { force: true });
  const proc = new QemuProcess({ ...spawnOpts(n), name, binary, logFile: n.qemuLog, detached: true });
  try {
    return { proc, qmp: (await connectQmp(proc, n, 15_000)).qmp };
  } catch (err) {
    await proc.stop(2000);
    throw err;
  }
}

/** Starts a node's QEMU as a primary alone (no COLO) and lets its VM run; returns the process. */
export async function launchAlone(n: NodePlan, binary: string, name: string): Promise<QemuProcess> {
  const { proc, qmp } = await launchNode(n, binary, name);
  try {
    await qmp.execute('cont', undefined, { timeoutMs: 5000 });
  } catch (err) {
    await proc.stop(2000);
    throw err;
  } finally {
    await qmp.close();
  }
  return proc;
}
