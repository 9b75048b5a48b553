/**
 * A protected pair on the lab's separate hosts: node A and node B each in
 * their own namespace with their agent, replication on its own cable, the
 * agents' heartbeat on another, the witness on the management network and
 * the client on the guest LAN. Used by the agent, partition and resync
 * tests, the takeover and resync benchmarks, the demo, and `lockstep lab
 * up|down`, which keeps a lab between commands through the file lab.json in
 * the lab's directory.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createLabHosts, labHosts, type LabHosts } from './hosts.js';
import { labConfigYaml } from './pair.js';
import { ip } from './netns.js';
import { LAB_SECRET, startRun, startWitness, stopAll, type LabRun, type RunOptions } from './scenario.js';
import { LockstepError } from '../util/errors.js';
import { writeFileAtomic } from '../util/files.js';
import { GUEST_READY_MARKER } from './guest.js';
import { loadConfig } from '../config/load.js';
import { up, type UpResult } from '../pair/up.js';
import { waitForSerial } from '../qemu/serial.js';
import { pidRunning } from '../util/proc.js';

const WITNESS_PORT = 7900;

/** What `lab.json` records of a lab, so that later commands find it. */
export interface HostsLabRecord {
  version: 1;
  ns: LabHosts['ns'];
  witnessPid: number | undefined;
  /** The configs of the pairs started in this lab, oldest first. */
  configs: string[];
  createdAt: string;
}

export class HostsLab {
  private constructor(
    readonly root: string,
    readonly hosts: LabHosts,
    private readonly witnessPid: number | undefined,
    private readonly started: string[],
    private readonly createdAt: string = new Date().toISOString(),
  ) {}

  static recordFile(root: string): string {
    return path.join(root, 'lab.json');
  }

  static async create(root: string, o: { prefix?: string } = {}): Promise<HostsLab> {
    fs.mkdirSync(root, { recursive: true });
    const hosts = await createLabHosts({ prefix: o.prefix });
    try {
      const lab = new HostsLab(root, hosts, await startWitness(root, hosts.ns.witness, `${hosts.addr.mgmt.witness}:${WITNESS_PORT}`), []);
      lab.save();
      return lab;
    } catch (err) {
      await hosts.remove();
      throw err;
    }
  }

  /** The lab recorded in `root`, or undefined when there is none or its namespaces are gone. */
  static open(root: string): HostsLab | undefined {
    let r: HostsLabRecord;
    try {
      r = JSON.parse(fs.readFileSync(HostsLab.recordFile(root), 'utf8')) as HostsLabRecord;
    } catch {
      return undefined;
    }
    if (!fs.existsSync(`/run/netns/${r.ns.a}`)) return undefined;
    return new HostsLab(root, labHosts(r.ns), r.witnessPid, r.configs, r.createdAt);
  }

  /** The configs of the pairs started here, oldest first. */
  get configs(): readonly string[] {
    return this.started;
  }

  /** The newest pair's config. */
  get currentConfig(): string {
    const f = this.started.at(-1);
    if (!f) throw new LockstepError(`the lab in ${this.root} has no pair`, { hint: 'start one with lockstep lab up' });
    return f;
  }

  private save(): void {
    const r: HostsLabRecord = { version: 1, ns: this.hosts.ns, witnessPid: this.witnessPid, configs: this.started, createdAt: this.createdAt };
    writeFileAtomic(HostsLab.recordFile(this.root), JSON.stringify(r, null, 2) + '\n');
  }

  /** Writes the config of a new pair (nodes a and b on their hosts) into a directory of its own; returns its path. */
  writePairConfig(o: { reprotect?: boolean; diskImage?: string } = {}): string {
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
        tap: { bridge: h.bridge, taps: h.taps },
        netns: { a: h.ns.a, b: h.ns.b },
        addresses: h.addr.replication,
        replication: { bufferDir: path.join(dir, 'shm') },
        ...(o.diskImage ? { disk: `{ image: ${JSON.stringify(o.diskImage)} }` } : {}),
        agents: {
          secret: LAB_SECRET,
          witness: `${h.addr.mgmt.witness}:${WITNESS_PORT}`,
          links: { a: [h.addr.heartbeat.a], b: [h.addr.heartbeat.b] },
          heartbeatIntervalMs: 100,
          heartbeatTimeoutMs: 500,
          leaseMs: 1000,
          reprotect: o.reprotect ?? true,
        },
      }),
    );
    this.started.push(cfgFile);
    this.save();
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

  /**
   * A new lab in `root` with a protected pair whose guest answers, left
   * running for later commands (lockstep lab up, the demo). On failure
   * nothing is left running.
   */
  static async up(root: string, o: { onStep?: (m: string) => void; onUpdate?: (m: string) => void } = {}): Promise<{ lab: HostsLab; pair: UpResult }> {
    const old = HostsLab.open(root);
    if (old) throw new LockstepError(`a lab is already up in ${root} (hosts ${old.hosts.ns.a}, ${old.hosts.ns.b}, ...)`, { hint: 'use it, or stop it first with lockstep lab down' });
    o.onStep?.('creating the lab hosts and their cables, starting the witness');
    const lab = await HostsLab.create(root, { prefix: 'ls' });
    try {
      const pair = await up(loadConfig(lab.writePairConfig()), { detached: true, onStep: o.onStep, onUpdate: o.onUpdate });
      o.onStep?.("waiting for the guest's services");
      await waitForSerial(pair.state.nodes.find((n) => n.role === 'primary')!.serialLog, GUEST_READY_MARKER, 120_000);
      return { lab, pair };
    } catch (err) {
      await lab.remove();
      throw err;
    }
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
    fs.rmSync(HostsLab.recordFile(this.root), { force: true });
  }
}
