/** Shared pieces of the agent and partition tests on lab pairs. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { counterGaps, counterProblems, type ClientSummary } from '../../src/lab/client-driver.js';
import type { LabRun } from '../../src/lab/scenario.js';
import { readState, updateState } from '../../src/pair/state.js';
import { nodeStatus, type NodeStatus } from '../../src/pair/status.js';
import { spawnAgent } from '../../src/pair/agents.js';
import { QmpClient } from '../../src/qmp/client.js';

/**
 * What each node's QEMU says of its COLO links when a test fails: run state,
 * COLO mode, every chardev with its connection (peer address or
 * "disconnected"), the netdev's filters. For failures seen once and not
 * again (traffic that stopped after a re-protection, checkpoints flowing).
 */
export async function dumpQemus(p: LabRun, label: string): Promise<void> {
  for (const n of readState(p.stateDir)?.nodes ?? []) {
    let q: QmpClient | undefined;
    try {
      q = await QmpClient.connect(n.qmpSocket2, { timeoutMs: 2000 });
      const status = await q.execute<{ status: string }>('query-status', undefined, { timeoutMs: 2000 });
      const colo = await q.execute<{ mode: string }>('query-colo-status', undefined, { timeoutMs: 2000 });
      const chardevs = await q.execute<Array<{ label: string; filename: string; 'frontend-open': boolean }>>('query-chardev', undefined, { timeoutMs: 2000 });
      const net = (await q.hmp('info network')).trim();
      const lines = [
        `${n.name} (${n.role}): ${status.status}, COLO ${colo.mode}`,
        ...chardevs.filter((c) => !/^(qmp|monitor|serial|compat_monitor)/.test(c.label)).map((c) => `  chardev ${c.label}: ${c.filename}${c['frontend-open'] ? '' : ' (no frontend)'}`),
        ...net.split('\n').map((l) => `  ${l.trim()}`),
      ];
      process.stderr.write(lines.map((l) => `# ${label}: ${l}\n`).join(''));
    } catch (err) {
      process.stderr.write(`# ${label}: ${n.name}: its QEMU cannot be asked: ${(err as Error).message}\n`);
    } finally {
      q?.destroy();
    }
  }
}

/**
 * The nodes whose VM is a writer: it runs (or is in a checkpoint, run state
 * 'colo') and is not a COLO secondary, whose output is dropped and whose disk
 * writes are buffered.
 */
export function writers(st: Awaited<ReturnType<LabRun['status']>>): string[] {
  return st.nodes.filter(isWriter).map((n) => n.name);
}

function isWriter(n: NodeStatus): boolean {
  return (n.runState === 'running' || n.runState === 'colo') && n.colo?.mode !== 'secondary';
}

/**
 * Asserts that `st` (a status of `p`) shows at most one writer, or, when it
 * shows two, that they were not both writers at one moment. A status asks
 * both QEMUs in parallel, and a QEMU whose main loop is busy (a checkpoint
 * behind a cut link, until a yank) answers late: one CI run's status got the
 * isolated old primary's answer from just before its fence stopped its VM and
 * the new primary's from after its takeover, 160 ms later, and called them two
 * writers. So two writers in one status are asked again, one node after the
 * other and the first again (X, Y, X): X a writer at both ends and Y in
 * between is two writers at once (X cannot be fenced and let run again within
 * that time: the lease is Y's).
 */
export async function assertOneWriter(p: LabRun, st: Awaited<ReturnType<LabRun['status']>>, label: string): Promise<void> {
  const w = writers(st);
  if (w.length <= 1) return;
  const nodes = readState(p.stateDir)?.nodes ?? [];
  const writesNow = async (name: string) => {
    const n = nodes.find((x) => x.name === name);
    return n !== undefined && isWriter(await nodeStatus(n, 3000));
  };
  const [x, y] = w as [string, string];
  const proven = (await writesNow(x)) && (await writesNow(y)) && (await writesNow(x));
  assert.ok(!proven, `${label}: two writers at once: ${x} and ${y} (asked one after the other: ${x}, ${y}, ${x} again)`);
  process.stderr.write(`# ${label}: one status saw ${w.join(' and ')} as writers, not at one moment (asked again one after the other: not both)\n`);
}

/** Runs one round on a fresh pair; on failure the pair is stopped and its agents' last log lines are shown before the error propagates. */
export async function runRound(start: () => Promise<LabRun>, label: string, body: (p: LabRun) => Promise<void>): Promise<void> {
  const p = await start();
  try {
    await body(p);
  } catch (err) {
    await dumpQemus(p, label);
    for (const n of ['a', 'b']) {
      const log = path.join(p.stateDir, n, 'agent.log');
      if (fs.existsSync(log)) process.stderr.write(`# ${label}: agent ${n} log (last lines):\n${fs.readFileSync(log, 'utf8').trim().split('\n').slice(-15).map((l) => `#   ${l}`).join('\n')}\n`);
    }
    await p.stop().catch(() => undefined);
    throw err;
  }
  assert.deepEqual(leftovers(p), [], `${label}: nothing of the pair is left running`);
}

/** What a client of a protected service may expect across one failure: its connection kept, no acknowledged write lost. */
export function assertClientOk(s: ClientSummary, label: string, o: { failedRequests?: number } = {}): void {
  process.stderr.write(`# ${label}: echo ${s.echo.ok}/${s.echo.sent} max ${s.echo.maxMs.toFixed(0)} ms; http ${s.http.ok} ok ${s.http.errors.length} errors max ${s.http.maxMs.toFixed(0)} ms\n`);
  assert.deepEqual(s.echo.errors, [], `${label}: the echo connection never failed`);
  assert.equal(s.echo.closed, false, `${label}: the echo connection stayed open`);
  assert.equal(counterProblems(s.http.counts), undefined, label);
  assert.equal(counterGaps(s.http.requests), undefined, label);
  const allowed = o.failedRequests ?? 1;
  assert.ok(s.http.errors.length <= allowed, `${label}: at most ${allowed} request(s) in flight failed: ${JSON.stringify(s.http.errors)}`);
}

/** Waits until the client has `by` more good echoes and answers than now. */
export async function carriesOn(p: LabRun, by: number, what = 'traffic after the failure'): Promise<void> {
  const t = p.client.latest;
  await p.client.until((x) => x.echoOk >= t.echoOk + by && x.httpOk >= t.httpOk + by, 60_000, what);
}

/** Restarts node `node`'s agent, as a supervisor would, and records it like `up` does, so that `down` ends it too. */
export function restartAgent(p: LabRun, node: string): number {
  const n = readState(p.stateDir)!.nodes.find((x) => x.name === node)!;
  const pid = spawnAgent(p.cfg, n);
  updateState(p.stateDir, (x) => ({ ...x, agents: { ...x.agents, [node]: pid } }));
  return pid;
}

/** Processes still running that belong to this run's pair (its agents, by config path; its QEMUs, by state directory). */
export function leftovers(p: LabRun): string[] {
  const out: string[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (cmd.includes(p.cfg) || cmd.some((x) => x.includes(p.stateDir + path.sep))) out.push(`${d}: ${cmd.join(' ').slice(0, 160)}`);
    } catch {
      /* gone */
    }
  }
  return out;
}
