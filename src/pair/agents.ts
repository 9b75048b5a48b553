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

export type AgentRole = 'primary' | 'secondary' | 'alone' | 'fenced' | 'down';

/** Whether `pid` is a lockstep agent of this config (guards against PID reuse). */
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

export interface AgentStatus {
  node: string;
  role: AgentRole;
  pid: number;
  qemu: { pid: number; alive: boolean; coloExited: boolean };
  peer: {
    name: string;
    /** ms since the last heartbeat from the peer, per path. */
    lastSeenMs: Record<string, number | null>;
    rttMs: number | null;
    qemu: 'alive' | 'dead' | 'unknown';
    hearsUs: boolean;
  };
  lease: { witness: string | null; held: boolean; remainingMs: number | null };
  lastDecision: string | null;
  lastFailover: PairState['lastFailover'] | null;
  /** The disk's generation (generation.json). */
  generation: number;
  /** A resync this agent runs (as the survivor) right now: its step and, while mirroring, the bytes copied. */
  resync: { to: string; step: string; runningMs: number; mirror?: { offset: number; len: number } } | null;
}

export function agentSocket(dataDir: string): string {
  return path.join(dataDir, 'agent.sock');
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
        resolve(JSON.parse(buf) as AgentStatus);
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
