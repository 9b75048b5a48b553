/**
 * A protected pair on the lab's separate hosts: node A and node B each in
 * their own namespace with their agent, replication on its own cable, the
 * agents' heartbeat on another, the witness on the management network and
 * the client on the guest LAN. Used by the partition tests.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { createLabHosts, type LabHosts } from './hosts.js';
import { labConfigYaml } from './pair.js';
import { NetnsClient } from './client-driver.js';
import { GUEST_READY_MARKER } from './guest.js';
import { LAB_SECRET, type LabRun } from './scenario.js';
import { loadConfig } from '../config/load.js';
import { up } from '../pair/up.js';
import { down } from '../pair/down.js';
import { pairStatus } from '../pair/status.js';
import { waitForSerial } from '../qemu/serial.js';
import { QmpClient } from '../qmp/client.js';
import { checkpointNow } from '../colo/startup.js';
import { packageRoot } from '../util/paths.js';
import { pidRunning } from '../util/proc.js';
import { sleep } from '../util/time.js';

const WITNESS_PORT = 7900;

export class HostsLab {
  private runs = 0;
  private readonly started: string[] = [];
  private constructor(
    readonly root: string,
    readonly hosts: LabHosts,
    private readonly witnessPid: number | undefined,
  ) {}

  static async create(root: string): Promise<HostsLab> {
    fs.mkdirSync(root, { recursive: true });
    const hosts = await createLabHosts();
    try {
      const cfg = path.join(root, 'witness.yaml');
      fs.writeFileSync(cfg, labConfigYaml({ name: 'lab', base: 9001, agents: { secret: LAB_SECRET, witness: `${hosts.addr.mgmt.witness}:${WITNESS_PORT}` }, disk: '{ image: unused.qcow2 }' }));
      const log = fs.openSync(path.join(root, 'witness.log'), 'a');
      const w = spawn('ip', ['netns', 'exec', hosts.ns.witness, process.execPath, path.join(packageRoot(), 'bin', 'lockstep.js'), 'witness', '-c', cfg, '--grace-ms', '0'], { stdio: ['ignore', log, log] });
      fs.closeSync(log);
      await sleep(1000);
      return new HostsLab(root, hosts, w.pid);
    } catch (err) {
      await hosts.remove();
      throw err;
    }
  }

  async startPair(o: { clientIntervalMs?: number; minTraffic?: number } = {}): Promise<LabRun> {
    const h = this.hosts;
    const dir = path.join(this.root, `r${++this.runs}`);
    fs.mkdirSync(dir);
    const cfgFile = path.join(dir, 'pair.yaml');
    fs.writeFileSync(
      cfgFile,
      labConfigYaml({
        name: 'hp',
        base: 9001,
        tap: { bridge: h.bridge, taps: h.taps },
        netns: { a: h.ns.a, b: h.ns.b },
        addresses: h.addr.replication,
        replication: { bufferDir: path.join(dir, 'shm') },
        agents: {
          secret: LAB_SECRET,
          witness: `${h.addr.mgmt.witness}:${WITNESS_PORT}`,
          links: { a: [h.addr.heartbeat.a], b: [h.addr.heartbeat.b] },
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
      await waitForSerial(path.join(dir, '.lockstep', 'hp', 'a', 'serial.log'), GUEST_READY_MARKER, 120_000);
      const qmp = await QmpClient.connect(path.join(dir, '.lockstep', 'hp', 'a', 'qmp2.sock'));
      try {
        await checkpointNow(qmp, c.replication.checkpointDelayMs);
      } finally {
        qmp.destroy();
      }
      client = NetnsClient.start(h.ns.client, '10.0.2.15', o.clientIntervalMs ?? 100);
      const min = o.minTraffic ?? 15;
      await client.until((t) => t.echoOk >= min && t.httpOk >= min, 60_000, 'traffic through COLO');
    } catch (err) {
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

  async remove(): Promise<void> {
    for (const f of this.started) await down(loadConfig(f)).catch(() => undefined);
    if (this.witnessPid && pidRunning(this.witnessPid)) process.kill(this.witnessPid, 'SIGTERM');
    await this.hosts.remove();
  }
}
