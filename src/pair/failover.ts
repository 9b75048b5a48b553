/**
 * Failover of a running pair: the survivor runs the documented procedure
 * ("Secondary Failover" when the primary died, "Primary Failover" when the
 * secondary died) and the state file records who carries the VM now and why.
 * Asked for on purpose with both nodes alive, the other node's QEMU is ended
 * first (by PID), so there is never a moment with two writers.
 */
import path from 'node:path';
import type { ResolvedConfig } from '../config/load.js';
import { generationFile, readDiskRecord, writeEpoch } from './generation.js';
import { formatEpoch, nextEpoch, type Epoch } from './epoch.js';
import { QmpClient, type QmpCommands } from '../qmp/client.js';
import { stopPid } from '../qemu/process.js';
import { secondaryFailoverSteps, primaryFailover, SECONDARY_FAILOVER, type ProcedureRunOptions } from '../colo/failover.js';
import { runSteps, type Step } from '../colo/steps.js';
import { LockstepError } from '../util/errors.js';
import { attachTap, detachTap, type TapPlace } from '../qemu/tap.js';
import { readState, recordFailover, liveNodes, type NodeState, type PairState } from './state.js';
import { agentsRunning } from './agents.js';
import { localSocketsIn } from './plan.js';
import type { ColoEndpoints } from '../qemu/cmdline.js';
import { waitFor } from '../util/time.js';

export interface FailoverResult {
  from: string;
  to: string;
  procedure: 'secondary failover' | 'primary failover';
  ms: number;
}

export interface FailoverOptions {
  /** With both nodes alive: the node that carries on (the other is stopped). */
  to?: string;
  reason?: string;
  onStep?: (msg: string) => void;
}

const TAP_STEP_MS = 5_000;

/**
 * The step that puts the tap of the node that runs the VM now onto the bridge, and the other node's off it (where
 * it lives on this host). Attaching a tap that is on the bridge already, detaching one that is off it: both
 * harmless to repeat. `detachMayFail`: a restart alone carries on whatever the other tap's state (its node may be
 * half gone); a takeover's retry tries both again.
 */
export function tapStep(tap: TapPlace, off: TapPlace | undefined, o: { detachMayFail?: boolean } = {}): Step {
  return {
    name: `tap ${tap.tap} on bridge ${tap.bridge}${off ? `, ${off.tap} off` : ''}`,
    timeoutMs: TAP_STEP_MS,
    run: async () => {
      if (off) await (o.detachMayFail ? detachTap(off).catch(() => undefined) : detachTap(off));
      await attachTap(tap);
    },
  };
}

/**
 * The primary is gone: the survivor's tap joins the bridge (the dead
 * primary's leaves it, where it lives on this host), then "Secondary
 * Failover", which also readies the survivor's listeners for a later resync,
 * then the announcement of where the VM is now. One list (the same for the
 * same pair record): a retry continues at its step.
 */
export function secondaryTakeoverSteps(qmp: QmpCommands, s: PairState, survivor: NodeState, lost: NodeState, o: { yank?: boolean; onStep?: (msg: string) => void } = {}): Step[] {
  const tap = survivor.tap;
  return [
    ...(tap ? [tapStep(tap, lost.tap)] : []),
    ...secondaryFailoverSteps(qmp, { yank: o.yank, forwards: s.forwards, prepareAsPrimary: survivorEndpoints(s, survivor, lost) }),
    ...(tap && s.announce !== false ? [{ name: 'announce-self', timeoutMs: ANNOUNCE_MS + 1000, run: () => announce(qmp, o.onStep ?? (() => {})) }] : []),
  ];
}

/**
 * The endpoints the survivor listens on as the next primary: the pair's, from
 * the survivor's side, with its local proxy's unix sockets in its own data
 * directory (private to root, as planPair makes them for a primary), never
 * the old primary's (a directory of another host) nor loopback TCP.
 */
export function survivorEndpoints(s: PairState, survivor: NodeState, lost: NodeState): ColoEndpoints {
  return { ...s.endpoints, primaryHost: survivor.address, secondaryHost: lost.address, localSockets: localSocketsIn(path.dirname(survivor.qmpSocket)) };
}

/** The primary is gone: secondaryTakeoverSteps, run. Used by `lockstep failover`. */
export async function secondaryTakeover(
  qmp: QmpCommands,
  s: PairState,
  survivor: NodeState,
  lost: NodeState,
  onStep: (msg: string) => void,
  o: { yank?: boolean } & ProcedureRunOptions = {},
): Promise<void> {
  await runSteps(SECONDARY_FAILOVER, secondaryTakeoverSteps(qmp, s, survivor, lost, { yank: o.yank, onStep }), { fromStep: o.fromStep, onProgress: o.onProgress, onStep });
}

const ANNOUNCE_MS = 2000;

/**
 * Tells the switches and neighbours where the VM is now: QEMU sends
 * gratuitous RARP (and ARP where the guest driver supports it) from the VM's
 * MAC, 5 rounds 50-550 ms apart. QEMU 7.2's secondary already does the same
 * by itself when its COLO incoming side ends at failover (seen on the lab's
 * switch with this call turned off), and the survivor's tap is on the bridge
 * before that, so this is the guarantee for a QEMU or an order of steps where
 * that one is lost, not the only announcement: `npm run bench` measures
 * takeovers with and without it. Best effort: the VM runs on either way,
 * found again at its next packet.
 */
export async function announce(qmp: QmpCommands, onStep: (msg: string) => void): Promise<void> {
  onStep('announce-self: telling the network where the VM is now');
  await qmp.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 }, { timeoutMs: ANNOUNCE_MS }).catch((err: unknown) => onStep(`announce-self failed (the VM runs on): ${err instanceof Error ? err.message : String(err)}`));
}

/**
 * The committed epoch of `node`'s disk; refuses when it is not known (a
 * missing or unreadable record): a node that cannot say which data it holds
 * must not begin writing alone on a guess.
 */
function survivorEpoch(c: ResolvedConfig, node: NodeState, other: NodeState): Epoch {
  const dir = path.dirname(node.qmpSocket);
  const r = readDiskRecord(dir);
  if (r.state === 'ok') return r.record.epoch;
  throw new LockstepError(
    `node ${node.name} would carry the VM on alone, but the epoch of its disk ${node.disk} is unknown: its record ${generationFile(dir)} is ${r.state === 'missing' ? 'missing' : `unreadable (${r.error})`}`,
    {
      hint:
        `nothing was changed. Inspect the records of both nodes (cat ${generationFile(dir)} ${generationFile(path.dirname(other.qmpSocket))}; ` +
        `lockstep status -c ${c.file} shows the nodes) to find out which disk holds the newest data before failing over`,
    },
  );
}

function nodeNamed(s: PairState, name: string): NodeState {
  const n = s.nodes.find((x) => x.name === name);
  if (!n) throw new LockstepError(`no node named "${name}"`, { hint: `the nodes are ${s.nodes.map((x) => x.name).join(', ')}` });
  return n;
}

export async function failover(c: ResolvedConfig, o: FailoverOptions = {}): Promise<FailoverResult> {
  const t0 = performance.now();
  const s = readState(c.stateDir);
  if (!s) throw new LockstepError(`pair "${c.name}" has not been started`, { hint: `start it with: lockstep up -c ${c.file}` });
  const live = liveNodes(s);
  if (agentsRunning(s)) return viaAgents(c, s, live, o, t0);
  if (live.length === 0) throw new LockstepError(`no node of pair "${c.name}" is running: nothing to fail over to`, { hint: `start it with: lockstep up -c ${c.file}` });
  let survivor: NodeState;
  let lost: NodeState;
  if (live.length === 2) {
    if (!o.to) {
      throw new LockstepError('both nodes are running: say which one carries on', { hint: `lockstep failover -c ${c.file} --to ${s.nodes.find((n) => n.role === 'secondary')?.name ?? 'NODE'}` });
    }
    survivor = nodeNamed(s, o.to);
    lost = s.nodes.find((n) => n !== survivor)!;
  } else {
    survivor = live[0]!;
    lost = s.nodes.find((n) => n !== survivor)!;
    if (o.to && o.to !== survivor.name) throw new LockstepError(`node ${o.to} is not running; only ${survivor.name} can carry on`);
  }
  // Checked before anything is stopped: a refusal leaves the pair as it was.
  const epoch = survivorEpoch(c, survivor, lost);
  if (live.length === 2) {
    o.onStep?.(`stopping ${lost.role} ${lost.name} (pid ${lost.pid}) so that only ${survivor.name} writes`);
    await stopPid(lost.pid, lost.qmpSocket, 0);
  }
  const qmp = await QmpClient.connect(survivor.qmpSocket, { timeoutMs: 5000 });
  // The survivor begins a new epoch before it writes alone: its disk is from now on newer than the lost node's.
  const next = nextEpoch(epoch, survivor.name);
  try {
    writeEpoch(path.dirname(survivor.qmpSocket), next, `failover: ${o.reason ?? 'requested'}`);
  } catch (err) {
    qmp.destroy();
    throw err;
  }
  o.onStep?.(`${survivor.name}: disk epoch ${formatEpoch(epoch)} -> ${formatEpoch(next)}`);
  let procedure: FailoverResult['procedure'];
  try {
    if (survivor.role === 'secondary') {
      procedure = 'secondary failover';
      o.onStep?.(`${survivor.name}: secondary failover (the primary ${lost.name} is gone)`);
      await secondaryTakeover(qmp, s, survivor, lost, (n) => o.onStep?.(`${survivor.name}: ${n}`));
    } else {
      procedure = 'primary failover';
      o.onStep?.(`${survivor.name}: primary failover (the secondary ${lost.name} is gone)`);
      await primaryFailover(qmp, (n) => o.onStep?.(`${survivor.name}: ${n}`));
    }
  } finally {
    qmp.destroy();
  }
  const ms = performance.now() - t0;
  recordFailover(c.stateDir, { from: lost.name, to: survivor.name, reason: o.reason ?? (live.length === 2 ? 'requested' : `${lost.role} ${lost.name} not running`), ms });
  return { from: lost.name, to: survivor.name, procedure, ms };
}

/**
 * With agents running, they own the QEMUs and run every failover: a failover
 * on purpose is the end of the other node's QEMU, which the agents then
 * handle exactly as a crash. Waits until the state records the takeover.
 */
async function viaAgents(c: ResolvedConfig, s: PairState, live: NodeState[], o: FailoverOptions, t0: number): Promise<FailoverResult> {
  if (!o.to) {
    throw new LockstepError('the node agents run failover by themselves when a node fails', {
      hint: `to move the VM on purpose, name the node that carries on: lockstep failover -c ${c.file} --to NODE`,
    });
  }
  const survivor = nodeNamed(s, o.to);
  if (!live.includes(survivor)) throw new LockstepError(`node ${o.to} is not running; it cannot carry the VM on`);
  const lost = s.nodes.find((n) => n !== survivor)!;
  const before = s.lastFailover?.at;
  if (live.includes(lost)) {
    o.onStep?.(`ending the ${lost.role} on ${lost.name} (pid ${lost.pid}); the agents take it from there`);
    await stopPid(lost.pid, lost.qmpSocket, 0);
  }
  await waitFor(
    `the agents to fail over to ${survivor.name}`,
    () => {
      const now = readState(c.stateDir)?.lastFailover;
      return now && now.at !== before && now.to === survivor.name ? now : undefined;
    },
    { timeoutMs: 15_000, intervalMs: 50, hint: `see the agent logs: ${c.stateDir}/*/agent.log` },
  );
  return { from: lost.name, to: survivor.name, procedure: survivor.role === 'secondary' ? 'secondary failover' : 'primary failover', ms: performance.now() - t0 };
}

/** Waits until the agents have recorded a takeover by `to` (at most `timeoutMs`), and returns it. */
export async function waitForAgentTakeover(c: ResolvedConfig, to: string, timeoutMs = 15_000): Promise<NonNullable<PairState['lastFailover']>> {
  return waitFor(`the agent of ${to} to take over`, () => {
    const lf = readState(c.stateDir)?.lastFailover;
    return lf && lf.to === to ? lf : undefined;
  }, { timeoutMs, intervalMs: 20 });
}
