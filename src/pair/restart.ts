/**
 * When the whole pair is down (both QEMUs gone: a double failure, or the
 * survivor dying while it resynced its new secondary, before that one held
 * the VM), the node with the newest disk starts the VM again by itself,
 * alone, from that disk, as a primary is after "Primary Failover". The
 * guest boots afresh: what lived only in the dead VMs' memory is gone, but
 * every acknowledged write is on that disk. Re-protection then follows as
 * after any failover. The agents decide when (src/node/core/core.ts).
 */
import type { ResolvedConfig } from '../config/load.js';
import { attachTap, detachTap } from '../qemu/tap.js';
import { planPair } from './plan.js';
import { launchAlone } from './launch.js';
import { prepareDataPlaneKey } from './keys.js';
import { updateState, type NodeState, type PairState } from './state.js';

export async function restartAlone(c: ResolvedConfig, s: PairState, node: string, step: (m: string) => void = () => {}): Promise<NodeState> {
  const me = s.nodes.find((n) => n.name === node)!;
  const peer = s.nodes.find((n) => n !== me)!;
  const plan = planPair(c, s.runtime, node, { alone: { disk: me.disk } });
  const p = plan.primary;
  if (p.tap) {
    step(`bridge ${p.tap.bridge}: ${p.tap.tap} on${peer.tap ? `, ${peer.tap.tap} off` : ''}`);
    if (peer.tap) await detachTap(peer.tap).catch(() => undefined);
    await attachTap(p.tap);
  }
  step(`starting the VM alone on ${node} from ${me.disk}`);
  prepareDataPlaneKey(c);
  const proc = await launchAlone(p, s.runtime.binary, `primary ${node} (alone)`);
  const at = new Date().toISOString();
  const next = updateState(c.stateDir, (x) => ({
    ...x,
    endpoints: plan.endpoints,
    nodes: x.nodes.map((n) =>
      n.name === node ? { ...n, role: 'primary' as const, pid: proc.pid, serialLog: p.serialLog, qemuLog: p.qemuLog } : { ...n, role: 'secondary' as const },
    ),
    lastRestart: { at, node, disk: me.disk },
    authoritativeDisk: me.disk,
  }));
  return next!.nodes.find((n) => n.name === node)!;
}
