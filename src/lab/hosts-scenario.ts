/**
 * A protected pair on the lab's separate hosts: node A and node B each in
 * their own namespace with their agent, replication on its own cable, the
 * agents' heartbeat on another, the witness on the management network and
 * the client on the guest LAN. Used by the agent, partition and resync
 * tests and the takeover and resync benchmarks. (`lockstep lab up` and the
 * demo run on the hosts' daemons instead: daemon-vm.ts.)
 */
import fs from 'node:fs';
import path from 'node:path';
import { createLabHosts, type LabHosts } from './hosts.js';
import { labConfigYaml } from './pair.js';
import { ip } from './netns.js';
import { LAB_SECRET, startRun, startWitness, stopAll, type LabRun, type RunOptions } from './scenario.js';
import { pidRunning } from '../util/proc.js';
import { labRuntime } from './runtime.js';

const WITNESS_PORT = 7900;

export class HostsLab {
  private constructor(
    readonly root: string,
    readonly hosts: LabHosts,
    private readonly witnessPid: number | undefined,
    private readonly started: string[],
  ) {}

  static async create(root: string, o: { prefix?: string; onStep?: (m: string) => void } = {}): Promise<HostsLab> {
    fs.mkdirSync(root, { recursive: true });
    // QEMU and the guest on this machine's own network, before any host exists (a host has no way out).
    await labRuntime({ onProgress: o.onStep, onStep: o.onStep });
    const hosts = await createLabHosts({ prefix: o.prefix });
    try {
      return new HostsLab(root, hosts, await startWitness(root, hosts.ns.witness, `${hosts.addr.mgmt.witness}:${WITNESS_PORT}`), []);
    } catch (err) {
      await hosts.remove();
      throw err;
    }
  }

  /** Writes the config of a new pair (nodes a and b on their hosts) into a directory of its own; returns its path. */
  writePairConfig(o: { reprotect?: boolean; diskImage?: string; announce?: boolean; replicationHeartbeat?: boolean } = {}): string {
    const h = this.hosts;
    // A directory of its own, after those of earlier labs in the same place (their logs and disks stay).
    let n = this.started.length + 1;
    while (fs.existsSync(path.join(this.root, `r${n}`))) n++;
    const dir = path.join(this.root, `r${n}`);
    fs.mkdirSync(dir);
    const cfgFile = path.join(dir, 'pair.yaml');
    fs.writeFileSync(
      cfgFile,
      labConfigYaml({
        name: 'hp',
        base: 9001,
        tap: { bridge: h.bridge, taps: h.taps, announce: o.announce },
        netns: { a: h.ns.a, b: h.ns.b },
        addresses: h.addr.replication,
        replication: { bufferDir: path.join(dir, 'shm') },
        ...(o.diskImage ? { disk: `{ image: ${JSON.stringify(o.diskImage)} }` } : {}),
        agents: {
          secret: LAB_SECRET,
          witness: `${h.addr.mgmt.witness}:${WITNESS_PORT}`,
          links: o.replicationHeartbeat
            ? { a: [h.addr.heartbeat.a, h.addr.replication.a], b: [h.addr.heartbeat.b, h.addr.replication.b] }
            : { a: [h.addr.heartbeat.a], b: [h.addr.heartbeat.b] },
          heartbeatIntervalMs: 100,
          heartbeatTimeoutMs: 500,
          reprotect: o.reprotect ?? true,
        },
      }),
    );
    this.started.push(cfgFile);
    return cfgFile;
  }

  /**
   * The client forgets what it learnt about its neighbours. A new pair's VM
   * reuses the address of the previous one, which just went away: the client
   * may still be resolving the old one, and a connection opened at that
   * moment fails with EHOSTUNREACH when that resolution gives up.
   */
  async flushClientNeighbours(): Promise<void> {
    await ip(['-n', this.hosts.ns.client, 'neigh', 'flush', 'all']);
  }

  /** The lab's witness process still runs. */
  witnessRunning(): boolean {
    return this.witnessPid !== undefined && pidRunning(this.witnessPid);
  }

  async startPair(o: RunOptions = {}): Promise<LabRun> {
    return startRun(this.writePairConfig(o), this.hosts.ns.client, () => this.flushClientNeighbours(), o);
  }

  /** Ends every pair and the witness, removes the namespaces; the directory (configs, logs, images) stays. */
  async remove(): Promise<void> {
    await stopAll(this.started, this.root, this.witnessPid);
    await this.hosts.remove();
  }
}
