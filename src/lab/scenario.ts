/**
 * A lab scenario: one network namespace with a bridge for the guests' LAN,
 * the pair's two nodes (with their agents) and a witness inside it, and a
 * client on the bridge. Used by the agent tests and the takeover benchmark.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { createBridgedNetns, type BridgedNetns } from './netns.js';
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
  client: NetnsClient;
  status(): Promise<PairStatus>;
  /** Stops the client and the pair; returns what the client saw. */
  stop(): Promise<Awaited<ReturnType<NetnsClient['finish']>>>;
}

export class NetnsLab {
  private runs = 0;
  private readonly started: string[] = [];
  private constructor(
    readonly root: string,
    readonly ns: BridgedNetns,
    private readonly witnessPid: number | undefined,
  ) {}

  static async create(root: string, o: { witness?: boolean } = {}): Promise<NetnsLab> {
    fs.mkdirSync(root, { recursive: true });
    const ns = await createBridgedNetns({ taps: ['tap-a', 'tap-b'] });
    let witnessPid: number | undefined;
    if (o.witness ?? true) {
      const cfg = path.join(root, 'witness.yaml');
      fs.writeFileSync(cfg, labConfigYaml({ name: 'lab', base: 9001, agents: { secret: LAB_SECRET, witness: '127.0.0.3:7900' }, disk: '{ image: unused.qcow2 }' }));
      const log = fs.openSync(path.join(root, 'witness.log'), 'a');
      const w = spawn('ip', ['netns', 'exec', ns.name, process.execPath, path.join(packageRoot(), 'bin', 'lockstep.js'), 'witness', '-c', cfg, '--grace-ms', '0'], { stdio: ['ignore', log, log] });
      fs.closeSync(log);
      witnessPid = w.pid;
      await sleep(1000);
    }
    return new NetnsLab(root, ns, witnessPid);
  }

  /** Brings a pair up (nodes a and b in the namespace, taps on its bridge), waits for the guest, starts a client. */
  async startPair(o: { clientIntervalMs?: number; minTraffic?: number; agents?: boolean } = {}): Promise<LabRun> {
    const dir = path.join(this.root, `r${++this.runs}`);
    fs.mkdirSync(dir);
    const cfgFile = path.join(dir, 'pair.yaml');
    fs.writeFileSync(
      cfgFile,
      labConfigYaml({
        name: 'ag',
        base: 9001,
        tap: { bridge: this.ns.bridge, taps: { a: 'tap-a', b: 'tap-b' } },
        netns: { a: this.ns.name, b: this.ns.name },
        replication: { bufferDir: path.join(dir, 'shm') },
        agents: o.agents === false ? undefined : {
          secret: LAB_SECRET,
          ...(this.witnessPid ? { witness: '127.0.0.3:7900' } : {}),
          heartbeatIntervalMs: 100,
          heartbeatTimeoutMs: 500,
          leaseMs: 1000,
        },
      }),
    );
    const c = loadConfig(cfgFile);
    this.started.push(cfgFile);
    await up(c, { detached: true });
    let client: NetnsClient | undefined;
    try {
      await waitForSerial(path.join(dir, '.lockstep', 'ag', 'a', 'serial.log'), GUEST_READY_MARKER, 120_000);
      // Bring the secondary up to date with the booted guest before any client connects.
      const qmp = await QmpClient.connect(path.join(dir, '.lockstep', 'ag', 'a', 'qmp2.sock'));
      try {
        await checkpointNow(qmp, c.replication.checkpointDelayMs);
      } finally {
        qmp.destroy();
      }
      await this.ns.flushNeighbours();
      client = NetnsClient.start(this.ns.name, '10.0.2.15', o.clientIntervalMs ?? 100);
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
      dir,
      client: started,
      status: () => pairStatus(c),
      stop: async () => {
        const s = await started.finish();
        await down(c);
        return s;
      },
    };
  }

  /** Stops whatever is still running and removes the namespace. */
  async remove(): Promise<void> {
    for (const f of this.started) await down(loadConfig(f)).catch(() => undefined);
    if (this.witnessPid && pidRunning(this.witnessPid)) process.kill(this.witnessPid, 'SIGTERM');
    await this.ns.remove();
  }
}
