/**
 * What every lab scenario does: start a witness, bring a pair of `lockstep
 * up` with its agents, wait for its guest and for a client's traffic through
 * COLO, and end it all again. The separate hosts (hosts-scenario.ts) use it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { labConfigYaml } from './pair.js';
import { NetnsClient } from './client-driver.js';
import { GUEST_READY_MARKER } from './guest.js';
import { loadConfig } from '../config/load.js';
import { up } from '../pair/up.js';
import { down } from '../pair/down.js';
import { pairStatus, type PairStatus } from '../pair/status.js';
import { waitForSerial } from '../qemu/serial.js';
import { QmpClient } from '../qmp/client.js';
import { checkpointNow } from '../colo/startup.js';
import { packageRoot } from '../util/paths.js';
import { pidRunning } from '../util/proc.js';
import { sleep } from '../util/time.js';

export const LAB_SECRET = 'lab secret for the lockstep lab runs';

export interface LabRun {
  cfg: string;
  dir: string;
  /** The pair's state directory (nodes' logs under <stateDir>/<node>/). */
  stateDir: string;
  client: NetnsClient;
  status(): Promise<PairStatus>;
  /** Stops the client and the pair; returns what the client saw. */
  stop(): Promise<Awaited<ReturnType<NetnsClient['finish']>>>;
}

/**
 * Starts the lab's witness in `netns`, listening on `address` (ADDR:PORT),
 * with no grace period (each lab starts from nothing); logs to root/witness.log.
 */
export async function startWitness(root: string, netns: string, address: string): Promise<number | undefined> {
  const cfg = path.join(root, 'witness.yaml');
  fs.writeFileSync(cfg, labConfigYaml({ name: 'lab', base: 9001, agents: { secret: LAB_SECRET, witness: address }, disk: '{ image: unused.qcow2 }' }));
  const log = fs.openSync(path.join(root, 'witness.log'), 'a');
  const w = spawn('ip', ['netns', 'exec', netns, process.execPath, path.join(packageRoot(), 'bin', 'lockstep.js'), 'witness', '-c', cfg, '--grace-ms', '0'], { stdio: ['ignore', log, log], detached: true });
  // Its own process group, not waited for: it outlives `lockstep lab up`, and stopAll ends it by PID.
  w.unref();
  fs.closeSync(log);
  await sleep(1000);
  return w.pid;
}

export interface RunOptions {
  clientIntervalMs?: number;
  /** The agents re-protect the VM by themselves after a failover (agents.reprotect; default true). */
  reprotect?: boolean;
  /** The VM's disk image (default: a new empty 64 MiB image). */
  diskImage?: string;
  /** Echoes and requests the client must have had answered before the run counts as started. */
  minTraffic?: number;
  /** Bridge mode: announce-self after a takeover (vm.network.announce; default true). */
  announce?: boolean;
  /**
   * The separate hosts' pairs: a second heartbeat path over the replication network, after the heartbeat cable's (as
   * the README advises, and as the daemons' lab hosts have it); default: the heartbeat cable alone.
   */
  replicationHeartbeat?: boolean;
}

/**
 * Brings up the pair of `cfgFile`, waits for its guest, takes a checkpoint,
 * then starts a client in `clientNetns` (after `beforeClient`) and waits for
 * traffic through COLO. On failure nothing is left running.
 */
export async function startRun(cfgFile: string, clientNetns: string, beforeClient: () => Promise<void>, o: RunOptions = {}): Promise<LabRun> {
  const c = loadConfig(cfgFile);
  const { state } = await up(c, { detached: true });
  const primary = state.nodes.find((n) => n.role === 'primary')!;
  let client: NetnsClient | undefined;
  try {
    await waitForSerial(primary.serialLog, GUEST_READY_MARKER, 120_000);
    // Bring the secondary up to date with the booted guest before any client connects.
    const qmp = await QmpClient.connect(primary.qmpSocket2);
    try {
      await checkpointNow(qmp, c.replication.checkpointDelayMs);
    } finally {
      qmp.destroy();
    }
    await beforeClient();
    client = NetnsClient.start(clientNetns, '10.0.2.15', o.clientIntervalMs ?? 100);
    const min = o.minTraffic ?? 15;
    await client.until((t) => t.echoOk >= min && t.httpOk >= min, 60_000, 'traffic through COLO');
  } catch (err) {
    // Leave nothing behind: the next pair needs the taps and ports.
    await client?.finish().catch(() => undefined);
    await down(c);
    throw err;
  }
  const started = client;
  return {
    cfg: cfgFile,
    dir: path.dirname(cfgFile),
    stateDir: c.stateDir,
    client: started,
    status: () => pairStatus(c),
    stop: async () => {
      const s = await started.finish();
      await down(c);
      return s;
    },
  };
}

/** Whether `pid` is the witness that startWitness(root, ...) started (and not a process that reused its PID). */
export function isLabWitness(pid: number, root: string): boolean {
  if (!pidRunning(pid)) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(path.join(root, 'witness.yaml'));
  } catch {
    return false;
  }
}

/** Ends the pairs of `configs` that still run and the lab's witness (started in `root`). */
export async function stopAll(configs: readonly string[], root: string, witnessPid: number | undefined): Promise<void> {
  for (const f of configs) await down(loadConfig(f)).catch(() => undefined);
  if (witnessPid && isLabWitness(witnessPid, root)) process.kill(witnessPid, 'SIGTERM');
}
