/**
 * lockstep status: per node its role, QEMU PID and run state, COLO state
 * (query-colo-status, query-migrate), and whether the pair is protected.
 * Every query is bounded; a node that does not answer is reported as such.
 */
import type { ResolvedConfig } from '../config/load.js';
import { QmpClient } from '../qmp/client.js';
import { isOurQemu } from '../qemu/process.js';
import { errorMessage } from '../util/errors.js';
import { readState, type NodeState, type PairState } from './state.js';
import { readAgentStatus, type AgentStatus } from './agents.js';
import path from 'node:path';

export interface NodeStatus {
  name: string;
  role: 'primary' | 'secondary';
  pid: number | null;
  /** QEMU process exists. */
  alive: boolean;
  /** query-status: running, paused, colo, inmigrate, ... */
  runState: string | null;
  colo: { mode: string; lastMode: string; reason: string } | null;
  migration: string | null;
  /** Why a query failed, if it did. */
  error?: string;
  /** The node agent's view (heartbeat, lease, decisions), when agents run. */
  agent?: AgentStatus | null;
}

export interface PairStatus {
  name: string;
  running: boolean;
  protected: boolean;
  accel: string | null;
  protectedAt: string | null;
  upMs: number | null;
  lastFailover: NonNullable<PairState['lastFailover']> | null;
  lastResync: NonNullable<PairState['lastResync']> | null;
  lastRestart: NonNullable<PairState['lastRestart']> | null;
  nodes: NodeStatus[];
}

/** One node's QEMU as its second monitor answers now (what `status` shows of each node, asked in parallel). */
export async function nodeStatus(n: NodeState, timeoutMs: number): Promise<NodeStatus> {
  const base: NodeStatus = { name: n.name, role: n.role, pid: n.pid, alive: false, runState: null, colo: null, migration: null };
  if (!isOurQemu(n.pid, n.qmpSocket)) return { ...base, pid: null };
  base.alive = true;
  let qmp: QmpClient | undefined;
  try {
    // The second monitor, so status works while a controller holds the first.
    qmp = await QmpClient.connect(n.qmpSocket2, { timeoutMs });
    const [st, colo, mig] = await Promise.all([
      qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs }),
      qmp.execute<{ mode: string; 'last-mode': string; reason: string }>('query-colo-status', undefined, { timeoutMs }),
      qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs }),
    ]);
    return { ...base, runState: st.status, colo: { mode: colo.mode, lastMode: colo['last-mode'], reason: colo.reason }, migration: mig.status ?? 'none' };
  } catch (err) {
    return { ...base, error: `QEMU does not answer QMP: ${errorMessage(err)}` };
  } finally {
    qmp?.destroy();
  }
}

export async function pairStatus(c: ResolvedConfig, timeoutMs = 3000): Promise<PairStatus> {
  const s = readState(c.stateDir);
  if (!s) return { name: c.name, running: false, protected: false, accel: null, protectedAt: null, upMs: null, lastFailover: null, lastResync: null, lastRestart: null, nodes: [] };
  const nodes = await Promise.all(
    s.nodes.map(async (n) => {
      const st = await nodeStatus(n, timeoutMs);
      if (s.agents) st.agent = (await readAgentStatus(path.dirname(n.qmpSocket), timeoutMs)) ?? null;
      return st;
    }),
  );
  const p = nodes.find((n) => n.role === 'primary');
  const sec = nodes.find((n) => n.role === 'secondary');
  // "colo" is the run state during a checkpoint (a hung one makes QMP time out instead).
  const runs = (n: NodeStatus | undefined) => n?.runState === 'running' || n?.runState === 'colo';
  const colo = runs(p) && runs(sec) && p?.colo?.mode === 'primary' && p.migration === 'colo' && sec?.colo?.mode === 'secondary';
  // QEMU's COLO mode says nothing of whether checkpoints still flow (a cut replication link leaves both "in COLO"):
  // with agents, protected also means that the agents that answer see checkpoints flowing (at least one must
  // answer; a dead agent is shown, and its peer's agent still takes over if that node's VM dies).
  const answered = nodes.filter((n) => n.agent);
  const agentsSay = !s.agents || (answered.length > 0 && answered.every((n) => n.agent!.protected));
  return {
    name: s.name,
    running: nodes.some((n) => n.alive),
    protected: colo && agentsSay,
    accel: s.runtime.accel,
    protectedAt: s.protectedAt ?? null,
    upMs: s.upMs ?? null,
    lastFailover: s.lastFailover ?? null,
    lastResync: s.lastResync ?? null,
    lastRestart: s.lastRestart ?? null,
    nodes,
  };
}
