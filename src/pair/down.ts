/**
 * lockstep down: stops both QEMUs cleanly. The secondary goes first, so it
 * cannot take over and write its buffers into its replica; then the primary,
 * whose disk image holds every acknowledged write. Each QEMU gets QMP quit,
 * then SIGTERM, then SIGKILL, each bounded in time.
 */
import type { ResolvedConfig } from '../config/load.js';
import { QmpClient } from '../qmp/client.js';
import { isOurQemu, stopPid } from '../qemu/process.js';
import { sleep } from '../util/time.js';
import { readState, writeState, type NodeState } from './state.js';
import { stopAgents } from './agents.js';
import { removeBuffers } from './buffers.js';

/** Ends one node's QEMU: QMP quit, then SIGTERM, then SIGKILL, each bounded. */
export async function quitNode(n: NodeState, onStep: (m: string) => void): Promise<'quit' | 'killed' | 'not running'> {
  if (!isOurQemu(n.pid, n.qmpSocket)) return 'not running';
  onStep(`stopping the ${n.role} on ${n.name} (pid ${n.pid})`);
  try {
    const qmp = await QmpClient.connect(n.qmpSocket2, { timeoutMs: 2000 });
    await qmp.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => {});
    qmp.destroy();
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline && isOurQemu(n.pid, n.qmpSocket)) await sleep(50);
    if (!isOurQemu(n.pid, n.qmpSocket)) return 'quit';
  } catch {
    /* no QMP: signals below */
  }
  await stopPid(n.pid, n.qmpSocket, 3000);
  return 'killed';
}

export interface DownResult {
  nodes: Array<{ name: string; role: string; result: 'quit' | 'killed' | 'not running' }>;
}

export async function down(c: ResolvedConfig, onStep: (m: string) => void = () => {}): Promise<DownResult> {
  const before = readState(c.stateDir);
  if (!before) return { nodes: [] };
  if (before.agents) {
    onStep('stopping the node agents');
    await stopAgents(before);
  }
  // Read again: an agent may have replaced its QEMU (a resync's new secondary, a restart) and recorded it while it
  // was being stopped; the QEMUs to stop are the ones on record now.
  const s = readState(c.stateDir) ?? before;
  const order = [...s.nodes.filter((n) => n.role === 'secondary'), ...s.nodes.filter((n) => n.role !== 'secondary')];
  const out: DownResult = { nodes: [] };
  for (const n of order) out.nodes.push({ name: n.name, role: n.role, result: await quitNode(n, onStep) });
  removeBuffers([s.buffers.active, s.buffers.hidden, ...(s.retiredBuffers ?? [])]);
  writeState(c.stateDir, { ...s, stoppedAt: new Date().toISOString() });
  return out;
}
