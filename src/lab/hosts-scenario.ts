/**
 * A protected pair on the lab's separate hosts: node A and node B each in
 * their own namespace with their agent, replication on its own cable, the
 * agents' heartbeat on another, the witness on the management network and
 * the client on the guest LAN. Used by the partition tests.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createLabHosts, type LabHosts } from './hosts.js';
import { labConfigYaml } from './pair.js';
import { LAB_SECRET, startRun, startWitness, stopAll, type LabRun, type RunOptions } from './scenario.js';

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
      return new HostsLab(root, hosts, await startWitness(root, hosts.ns.witness, `${hosts.addr.mgmt.witness}:${WITNESS_PORT}`));
    } catch (err) {
      await hosts.remove();
      throw err;
    }
  }

  async startPair(o: RunOptions = {}): Promise<LabRun> {
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
    this.started.push(cfgFile);
    return startRun(cfgFile, h.ns.client, async () => undefined, o);
  }

  async remove(): Promise<void> {
    await stopAll(this.started, this.witnessPid);
    await this.hosts.remove();
  }
}
