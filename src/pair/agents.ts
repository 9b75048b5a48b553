/**
 * Starting and stopping the node agents of a pair. They run detached (they
 * outlive `lockstep up`), each in its node's network namespace, logging to
 * <dataDir>/agent.log; their PIDs go to the state file.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { ResolvedConfig } from '../config/load.js';
import { packageRoot } from '../util/paths.js';
import { pidRunning } from '../util/proc.js';
import { sleep, waitFor } from '../util/time.js';
import { LockstepError } from '../util/errors.js';
import net from 'node:net';
import type { PairState } from './state.js';
import { z } from 'zod';

export type AgentRole = 'primary' | 'secondary' | 'alone' | 'fenced' | 'down';

export function isOurAgent(pid: number, configFile: string): boolean {
  if (!pidRunning(pid)) return false;
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return cmd.includes('agent') && cmd.includes(configFile);
  } catch {
    return false;
  }
}

const logFile = (n: PairState['nodes'][number]) => path.join(path.dirname(n.qmpSocket), 'agent.log');

/**
 * Starts the agent of node `n` of the pair of `configFile`, detached, in the
 * node's network namespace, appending to <dataDir>/agent.log; returns its PID.
 * (What a supervisor does to restart one.)
 */
export function spawnAgent(configFile: string, n: PairState['nodes'][number]): number {
  const out = fs.openSync(logFile(n), 'a');
  const args = [path.join(packageRoot(), 'bin', 'lockstep.js'), 'agent', '-c', configFile, '--node', n.name];
  const [cmd, ...rest] = n.netns ? ['ip', 'netns', 'exec', n.netns, process.execPath, ...args] : [process.execPath, ...args];
  const child = spawn(cmd!, rest, { detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  child.unref();
  return child.pid!;
}

export async function startAgents(c: ResolvedConfig, s: PairState): Promise<Record<string, number>> {
  const pids: Record<string, number> = {};
  // A socket left by an earlier agent would look like a started one.
  for (const n of s.nodes) fs.rmSync(agentSocket(path.dirname(n.qmpSocket)), { force: true });
  for (const n of s.nodes) pids[n.name] = spawnAgent(c.file, n);
  try {
    // Ready when each answers on its control socket.
    for (const n of s.nodes) {
      const sock = agentSocket(path.dirname(n.qmpSocket));
      await waitFor(
        `the agent of node ${n.name} to start`,
        () => {
          if (!pidRunning(pids[n.name]!)) {
            const log = fs.readFileSync(logFile(n), 'utf8').trim().split('\n').slice(-5).join('\n');
            throw new LockstepError(`the agent of node ${n.name} exited at start:\n${log}`, { hint: `see ${logFile(n)}` });
          }
          return fs.existsSync(sock);
        },
        { timeoutMs: 15_000, intervalMs: 50 },
      );
    }
  } catch (err) {
    // Not half a set of agents: the others are ended too, nothing is left unrecorded.
    await endPids(Object.values(pids));
    throw err;
  }
  return pids;
}

async function endPids(pids: number[]): Promise<void> {
  const live = pids.filter((p) => pidRunning(p));
  for (const p of live) process.kill(p, 'SIGTERM');
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && live.some((p) => pidRunning(p))) await sleep(50);
  for (const p of live) if (pidRunning(p)) process.kill(p, 'SIGKILL');
}

/** Ends the agents (SIGTERM, then SIGKILL), so that stopping the VMs next is not taken for a failure. */
export async function stopAgents(s: PairState): Promise<void> {
  await endPids(Object.values(s.agents ?? {}).filter((p) => isOurAgent(p, s.configFile)));
}

export function agentsRunning(s: PairState): boolean {
  return Object.values(s.agents ?? {}).some((p) => isOurAgent(p, s.configFile));
}

const epoch = z.object({ run: z.string(), gen: z.number(), by: z.string() });
const ms = z.number().nullable();

/**
 * What an agent says of itself on its control socket (the agent core's
 * status, plus its process): parsed here, where it arrives.
 */
export const agentStatusSchema = z.object({
  node: z.string(),
  role: z.enum(['primary', 'secondary', 'alone', 'fenced', 'down']),
  roleForMs: z.number(),
  /** COLO runs and its checkpoints flow, as this node sees it. */
  protected: z.boolean(),
  /** Everything that is not as it should be, in words. */
  degraded: z.array(z.string()),
  fence: z.object({ why: z.string(), from: z.string(), forMs: z.number() }).nullable(),
  qemu: z.object({ state: z.enum(['attaching', 'alive', 'gone']), coloExited: z.boolean(), checkpointAgeMs: ms, inCheckpointMs: ms, paused: z.boolean() }),
  peer: z.object({
    name: z.string(),
    paths: z.array(z.object({ up: z.boolean(), lastHeardMs: ms })),
    role: z.enum(['primary', 'secondary', 'alone', 'fenced', 'down']).nullable(),
    qemu: z.enum(['alive', 'dead', 'unknown']),
    hearsUs: z.boolean(),
    rttMs: ms,
    disk: epoch.nullable(),
  }),
  lease: z.object({ witness: z.boolean(), held: z.boolean(), remainingMs: ms, witnessAnswerMs: ms, lastRefusal: z.string().nullable(), stale: z.boolean() }),
  disk: z.object({ epoch: epoch.nullable(), pending: epoch.nullable() }),
  work: z
    .object({
      kind: z.string(),
      phase: z.string().nullable(),
      why: z.string(),
      runningMs: z.number(),
      step: z.string().nullable(),
      mirror: z.object({ offset: z.number(), len: z.number() }).nullable(),
    })
    .nullable(),
  retry: z.array(z.object({ kind: z.string(), failures: z.number(), inMs: z.number(), lastError: z.string().nullable() })),
  lastDecision: z.string().nullable(),
  waiting: z.string().nullable(),
  /** The agent's process and its QEMU's. */
  pid: z.number(),
  qemuPid: z.number(),
  lastFailover: z.object({ at: z.string(), from: z.string(), to: z.string(), reason: z.string(), ms: z.number(), sinceCheckpointMs: z.number().optional() }).nullable(),
});

export type AgentStatus = z.infer<typeof agentStatusSchema>;

export function agentSocket(dataDir: string): string {
  return path.join(dataDir, 'agent.sock');
}


/**
 * Waits until every agent of the pair says it is protected (it has seen a
 * checkpoint since it attached), at most `timeoutMs`; returns whether they
 * did. Agents that just (re)started say so only after the next checkpoint.
 */
export async function waitAgentsProtected(s: PairState, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const st = await Promise.all(s.nodes.map((n) => readAgentStatus(path.dirname(n.qmpSocket), 1000)));
    if (st.every((a) => a?.protected)) return true;
    await sleep(100);
  }
  return false;
}

/** Reads an agent's status over its control socket. */
export function readAgentStatus(dataDir: string, timeoutMs = 1000): Promise<AgentStatus | undefined> {
  return new Promise((resolve) => {
    const c = net.createConnection({ path: agentSocket(dataDir) });
    let buf = '';
    const t = setTimeout(() => {
      c.destroy();
      resolve(undefined);
    }, timeoutMs);
    c.on('data', (d) => (buf += d.toString()));
    c.on('end', () => {
      clearTimeout(t);
      try {
        const r = agentStatusSchema.safeParse(JSON.parse(buf));
        resolve(r.success ? r.data : undefined);
      } catch {
        resolve(undefined);
      }
    });
    c.on('error', () => {
      clearTimeout(t);
      resolve(undefined);
    });
  });
}
