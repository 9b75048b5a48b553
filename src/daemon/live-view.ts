/**
 * The live view of VMs across their hosts, as the dashboard and `lockstep
 * status --watch` show it: each host's own overview (GET /v1/overview), or
 * why it could not be asked, merged per VM into what a person needs at a
 * glance: protected or not and why not, each of its two hosts' part, their
 * checkpoint pauses, and the recent events of both hosts in time order.
 * Pure: the answers and the time come in, the view goes out.
 */
import type { JournalRecord, Overview, VmOverview } from './api-types.js';

/** A host's answer counts as current for this long; older, the host is shown as not answering. */
export const STALE_AFTER_MS = 1500;
/** Recent events per VM and for the whole view. */
export const VM_EVENTS_SHOWN = 12;
export const VIEW_EVENTS_SHOWN = 40;

export interface HostAnswer {
  host: string;
  /** Its overview, when it ever answered. */
  overview: Overview | null;
  /** The last attempt's error, if it failed. */
  error: string | null;
  /** How old the overview is, by the asking side's clock (ms). */
  ageMs: number | null;
}

export interface HostPart {
  host: string;
  /** It answered recently and without error. */
  reachable: boolean;
  /** Why it cannot be asked (and since when), when it cannot. */
  problem: string | null;
  /** Its last word on the VM (possibly stale: see reachable), null if it never answered or has no such VM. */
  vm: VmOverview | null;
}

export type VmState = 'protected' | 'resyncing' | 'failing-over' | 'unprotected' | 'stopped' | 'unknown';

export interface VmView {
  name: string;
  hosts: [string, string];
  protected: boolean;
  state: VmState;
  /** Why it is not protected, each in words, the most telling first (empty when protected). */
  why: string[];
  /** Its two hosts' parts, in the VM's host order (first: its first primary). */
  parts: [HostPart, HostPart];
  /** The recent events of both hosts about it, oldest first. */
  events: JournalRecord[];
}

export interface LiveView {
  /** Who made the view (a daemon's host name, or "lockstep status --watch"). */
  by: string;
  atMs: number;
  hosts: Array<{ host: string; reachable: boolean; problem: string | null; version: string | null; healthy: boolean | null; healthProblems: string[] }>;
  vms: VmView[];
  /** Every host's recent events, oldest first. */
  events: JournalRecord[];
}

function reachable(a: HostAnswer): boolean {
  return a.overview !== null && a.error === null && a.ageMs !== null && a.ageMs <= STALE_AFTER_MS;
}

function problemOf(a: HostAnswer): string | null {
  if (reachable(a)) return null;
  const age = a.ageMs === null ? 'never answered' : `no answer for ${(a.ageMs / 1000).toFixed(1)} s`;
  return `${age}${a.error ? `: ${a.error}` : ''}`;
}

/** Records in time order (by `at`, then host, then number), without repeats. */
export function mergeRecords(lists: JournalRecord[][]): JournalRecord[] {
  const seen = new Set<string>();
  const all: JournalRecord[] = [];
  for (const l of lists) {
    for (const r of l) {
      const k = `${r.host}#${r.seq}`;
      if (seen.has(k)) continue;
      seen.add(k);
      all.push(r);
    }
  }
  return all.sort((x, y) => x.at.localeCompare(y.at) || x.host.localeCompare(y.host) || x.seq - y.seq);
}

function stateOf(parts: HostPart[], isProtected: boolean): VmState {
  if (isProtected) return 'protected';
  const vms = parts.map((p) => p.vm).filter((v): v is VmOverview => v !== null);
  if (vms.length === 0) return 'unknown';
  if (vms.every((v) => v.phase === 'stopped')) return 'stopped';
  const work = vms.map((v) => v.agent?.work?.kind);
  if (work.some((k) => k === 'reprotect' || k === 'join')) return 'resyncing';
  if (work.some((k) => k === 'takeover' || k === 'primary-failover' || k === 'restart')) return 'failing-over';
  return 'unprotected';
}

/** Why a VM is not protected, from its two hosts' parts: unreachable hosts first, then what each agent sees amiss. */
function whyNot(parts: HostPart[]): string[] {
  const out: string[] = [];
  for (const p of parts) if (!p.reachable) out.push(`host ${p.host} cannot be asked (${p.problem})`);
  for (const p of parts) {
    const v = p.vm;
    if (!v || !p.reachable) continue;
    if (v.phase !== 'running') out.push(`${p.host}: ${v.phase}${v.detail ? ` (${v.detail})` : ''}`);
    const a = v.agent;
    if (!a) continue;
    if (a.work) out.push(`${p.host}: ${a.work.kind}${a.work.step ? ` (${a.work.step})` : ''}: ${a.work.why}`);
    for (const d of a.degraded) out.push(`${p.host}: ${d}`);
    if (a.waiting && !a.work) out.push(`${p.host} waits: ${a.waiting}`);
  }
  return [...new Set(out)];
}

/** The view of every VM the answering hosts run, at `nowMs`; `by` names who made it. */
export function liveView(by: string, answers: HostAnswer[], nowMs: number): LiveView {
  const byHost = new Map(answers.map((a) => [a.host, a]));
  const names = new Map<string, [string, string]>();
  for (const a of answers) for (const v of a.overview?.vms ?? []) if (!names.has(v.name)) names.set(v.name, v.hosts);
  const vms: VmView[] = [...names.entries()]
    .sort(([x], [y]) => x.localeCompare(y))
    .map(([name, hosts]) => {
      const parts = hosts.map((h): HostPart => {
        const a = byHost.get(h);
        if (!a) return { host: h, reachable: false, problem: 'not asked (this host does not know it)', vm: null };
        return { host: h, reachable: reachable(a), problem: problemOf(a), vm: a.overview?.vms.find((v) => v.name === name) ?? null };
      }) as [HostPart, HostPart];
      const isProtected = parts.every((p) => p.reachable && p.vm?.agent?.protected === true);
      const events = mergeRecords(hosts.map((h) => (byHost.get(h)?.overview?.events ?? []).filter((r) => r.vm === name || r.vm === null))).slice(-VM_EVENTS_SHOWN);
      return { name, hosts, protected: isProtected, state: stateOf(parts, isProtected), why: isProtected ? [] : whyNot(parts), parts, events };
    });
  return {
    by,
    atMs: nowMs,
    hosts: answers.map((a) => ({
      host: a.host,
      reachable: reachable(a),
      problem: problemOf(a),
      version: a.overview?.version ?? null,
      healthy: a.overview ? a.overview.healthy : null,
      healthProblems: a.overview?.healthProblems ?? [],
    })),
    vms,
    events: mergeRecords(answers.map((a) => a.overview?.events ?? [])).slice(-VIEW_EVENTS_SHOWN),
  };
}
