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
import { tapStep } from './failover.js';
import { runSteps, type Step } from '../colo/steps.js';
import { planPair } from './plan.js';
import { launchAlone } from './launch.js';
import { prepareDataPlaneKey } from './keys.js';
import { updateState, type NodeState, type PairState } from './state.js';

export const RESTART = 'restart alone';

/** Starting a QEMU: its QMP socket within 15 s, then cont (launch.ts), and ending it again if that fails. */
const LAUNCH_STEP_MS = 25_000;

/**
 * The steps of a restart alone on `node`: its tap onto the bridge (the
 * peer's off it), then the VM started from the node's disk, recorded in the
 * pair's state as the primary. `started` gets the node's new record.
 */
export function restartAloneSteps(c: ResolvedConfig, s: PairState, node: string, started: (n: NodeState) => void = () => {}): Step[] {
  const me = s.nodes.find((n) => n.name === node)!;
  const peer = s.nodes.find((n) => n !== me)!;
  const plan = planPair(c, s.runtime, node, { alone: { disk: me.disk } });
  const p = plan.primary;
  const tap = p.tap;
  return [
    ...(tap ? [tapStep(tap, peer.tap, { detachMayFail: true })] : []),
    {
      name: `start the VM alone from ${me.disk}`,
      timeoutMs: LAUNCH_STEP_MS,
      run: async () => {
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
        started(next?.nodes.find((n) => n.name === node) ?? { ...me, pid: proc.pid });
      },
    },
  ];
}

export async function restartAlone(c: ResolvedConfig, s: PairState, node: string, step: (m: string) => void = () => {}): Promise<NodeState> {
  let started: NodeState | undefined;
  await runSteps(RESTART, restartAloneSteps(c, s, node, (n) => (started = n)), { onStep: step });
  return started!;
}
