/**
 * Made-up overviews of hosts and their VMs, shaped as the daemon's API says
 * them (api-types' schemas check each), for the tests of the live views
 * without VMs: a protected pair, a host lost, a resync under way.
 */
import { overviewSchema, type Overview, type VmOverview, type JournalRecord } from '../../src/daemon/api-types.js';
import type { AgentStatus } from '../../src/pair/agents.js';

export interface AgentLike {
  role: AgentStatus['role'];
  protected: boolean;
  peer: string;
  degraded?: string[];
  lease?: boolean;
  /** Since the peer was last heard on every path (default: a moment ago). */
  heardMs?: number | null;
  work?: AgentStatus['work'];
  waiting?: string | null;
  epoch?: number;
}

export function agentStatus(node: string, a: AgentLike): AgentStatus {
  const inColo = a.role === 'primary' || a.role === 'secondary';
  return {
    node,
    role: a.role,
    roleForMs: 183_000,
    protected: a.protected,
    degraded: a.degraded ?? [],
    fence: null,
    qemu: { state: a.role === 'down' ? 'gone' : 'alive', coloExited: false, checkpointAgeMs: inColo ? 412 : null, inCheckpointMs: null, paused: false },
    peer: { name: a.peer, paths: [{ up: true, lastHeardMs: a.heardMs ?? 41 }, { up: true, lastHeardMs: a.heardMs ?? 63 }], role: null, qemu: 'alive', hearsUs: true, rttMs: 0.42, disk: null },
    lease: { witness: true, held: a.lease ?? false, remainingMs: a.lease ? 780 : null, witnessAnswerMs: 120, lastRefusal: null, stale: false },
    disk: { epoch: { run: 'run-1', gen: a.epoch ?? 3, by: 'a' }, pending: null },
    work: a.work ?? null,
    retry: [],
    lastDecision: null,
    waiting: a.waiting ?? null,
    pid: 4242,
    qemuPid: node === 'a' ? 5151 : 6262,
    lastFailover: null,
  };
}

/** Pauses of one checkpoint every `everyMs` over the last `spanMs` before `nowMs`, around `medianMs`. */
export function pausesUntil(nowMs: number, o: { spanMs?: number; everyMs?: number; medianMs?: number } = {}): Array<[number, number]> {
  const span = o.spanMs ?? 300_000;
  const every = o.everyMs ?? 2000;
  const med = o.medianMs ?? 60;
  const out: Array<[number, number]> = [];
  for (let t = nowMs - span, i = 0; t <= nowMs; t += every, i++) out.push([t, Math.round((med + 25 * Math.sin(i / 3) + (i % 17 === 0 ? 70 : 0) + (i % 5) * 3) * 100) / 100]);
  return out;
}

export function vmOverview(host: string, name: string, agent: AgentLike | null, o: { hosts?: [string, string]; pauses?: Array<[number, number]> } = {}): VmOverview {
  const pauses = o.pauses ?? [];
  const lastMin = pauses.slice(-30).map(([, ms]) => ms).sort((x, y) => x - y);
  return {
    name,
    hosts: o.hosts ?? ['a', 'b'],
    definedRole: (o.hosts ?? ['a', 'b'])[0] === host ? 'primary' : 'secondary',
    phase: 'running',
    detail: null,
    agent: agent && agentStatus(host, agent),
    dataPlane: 'tls',
    heartbeatTimeoutMs: 500,
    leaseMs: 1000,
    checkpoints: pauses.length,
    pauseStats: lastMin.length ? { count: lastMin.length, p50Ms: lastMin[Math.floor(lastMin.length / 2)]!, p99Ms: lastMin[lastMin.length - 1]!, maxMs: lastMin[lastMin.length - 1]! } : { count: 0, p50Ms: null, p99Ms: null, maxMs: null },
    pauses,
  };
}

export function record(host: string, seq: number, atMs: number, kind: string, reason: string, vm: string | null = 'web', figures: JournalRecord['figures'] = {}): JournalRecord {
  return { seq, at: new Date(atMs).toISOString(), host, vm, kind, reason, figures };
}

export function overview(host: string, atMs: number, vms: VmOverview[], events: JournalRecord[] = []): Overview {
  return overviewSchema.parse({ host, version: '0.1.0', atMs, uptimeMs: 3_600_000, healthy: true, healthProblems: [], heartbeatSessions: [], vms, events });
}
