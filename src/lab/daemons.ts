/**
 * The lab's hosts as real hosts are set up: each node host (a, b) and the
 * management host (in the witness's namespace, on the management network)
 * gets its own file system view (mountns.ts), its host file and identity
 * from `lockstep host init` run inside it, the other hosts' certificates
 * copied over as an operator would (scp) and pinned with `lockstep host
 * trust` inside it; a and b run `lockstep daemon`. Tests then drive the hosts
 * with the CLI from the management host, as a user would.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { LabHosts } from './hosts.js';
import { createHostFs, openHostFs, HOST_DIRS, type HostFs } from './mountns.js';
import { run, type RunResult } from '../util/exec.js';
import { LockstepError } from '../util/errors.js';
import { packageRoot } from '../util/paths.js';
import { pidRunning } from '../util/proc.js';
import { sleep, waitFor } from '../util/time.js';
import { socketAnswers } from '../util/net.js';

export const API_PORT = 7700;
export type LabHostName = 'a' | 'b' | 'mgmt';

interface HostEntry {
  name: LabHostName;
  netns: string;
  fs: HostFs;
  /** The daemon this object started, if it did (others are found among the host's processes). */
  started?: number;
}

const NAMES: readonly LabHostName[] = ['a', 'b', 'mgmt'];

interface ExecOptions {
  /** Throw when the command fails. */
  check?: boolean;
  timeoutMs?: number;
  /** Each line of its output, as it comes. */
  onLine?: (line: string) => void;
}

export class LabDaemons {
  private constructor(
    readonly root: string,
    private readonly hosts: Record<LabHostName, HostEntry>,
  ) {}

  /** Sets the hosts up under `root`/hosts and starts the daemons of a and b. */
  static async create(root: string, lab: LabHosts, o: { tag: string }): Promise<LabDaemons> {
    const hostsDir = path.join(root, 'hosts');
    const made: HostFs[] = [];
    try {
      const entry = async (name: LabHostName, netns: string): Promise<HostEntry> => {
        const f = await createHostFs({ name: `${o.tag}-${name}`, root: hostsDir });
        made.push(f);
        return { name, netns, fs: f };
      };
      const hosts = { a: await entry('a', lab.ns.a), b: await entry('b', lab.ns.b), mgmt: await entry('mgmt', lab.ns.witness) };
      const d = new LabDaemons(root, hosts);
      for (const n of ['a', 'b'] as const) {
        await d.cli(n, ['host', 'init', '--name', n, '--replication', lab.addr.replication[n], '--heartbeat', `${lab.addr.heartbeat[n]},${lab.addr.replication[n]}`, '--api', `${lab.addr.mgmt[n]}:${API_PORT}`], { check: true });
      }
      await d.cli('mgmt', ['host', 'init', '--name', 'mgmt', '--replication', lab.addr.mgmt.witness], { check: true });
      const api = { a: `${lab.addr.mgmt.a}:${API_PORT}`, b: `${lab.addr.mgmt.b}:${API_PORT}`, mgmt: `${lab.addr.mgmt.witness}:${API_PORT}` };
      for (const [who, whom] of [['a', 'b'], ['b', 'a'], ['a', 'mgmt'], ['b', 'mgmt'], ['mgmt', 'a'], ['mgmt', 'b']] as Array<[LabHostName, LabHostName]>) {
        await d.trust(who, whom, api[whom]);
      }
      for (const n of ['a', 'b'] as const) await d.startDaemon(n);
      return d;
    } catch (err) {
      for (const f of made) await f.remove();
      throw err;
    }
  }

  /**
   * The hosts that create(root, lab, { tag }) set up, possibly in another
   * process (lockstep lab up, then lab kill); undefined when they are gone.
   */
  static async open(root: string, lab: LabHosts, o: { tag: string }): Promise<LabDaemons | undefined> {
    const netns: Record<LabHostName, string> = { a: lab.ns.a, b: lab.ns.b, mgmt: lab.ns.witness };
    const entries: Partial<Record<LabHostName, HostEntry>> = {};
    for (const name of NAMES) {
      const f = await openHostFs({ name: `${o.tag}-${name}`, root: path.join(root, 'hosts') });
      if (!f) return undefined;
      entries[name] = { name, netns: netns[name], fs: f };
    }
    return new LabDaemons(root, entries as Record<LabHostName, HostEntry>);
  }

  /** Host `whom`'s certificate copied to `who` (as scp would), then pinned there with `lockstep host trust`. */
  async trust(who: LabHostName, whom: LabHostName, api: string): Promise<void> {
    const incoming = path.join(this.hosts[who].fs.dirs.etc, 'incoming');
    fs.mkdirSync(incoming, { recursive: true });
    fs.copyFileSync(path.join(this.hosts[whom].fs.dirs.etc, 'tls', 'host.crt'), path.join(incoming, `${whom}.crt`));
    await this.cli(who, ['host', 'trust', '--name', whom, '--api', api, path.join(HOST_DIRS.etc, 'incoming', `${whom}.crt`)], { check: true });
  }

  /** The host's directories seen from outside (for tests that look at what a host wrote). */
  dirs(h: LabHostName): HostFs['dirs'] {
    return this.hosts[h].fs.dirs;
  }

  /** The command prefix that runs a command inside host `h`. */
  enter(h: LabHostName): string[] {
    return this.hosts[h].fs.enter(this.hosts[h].netns);
  }

  /** Runs `cmd args` inside host `h`. */
  exec(h: LabHostName, cmd: string, args: string[], o: ExecOptions = {}): Promise<RunResult> {
    const [c, ...rest] = this.enter(h);
    return run(c!, [...rest, cmd, ...args], { allowFailure: !o.check, timeoutMs: o.timeoutMs ?? 30_000, onLine: o.onLine, what: `${cmd} ${args.join(' ')} on lab host ${h}` });
  }

  /** Runs the lockstep command inside host `h`. */
  cli(h: LabHostName, args: string[], o: ExecOptions = {}): Promise<RunResult> {
    return this.exec(h, process.execPath, [path.join(packageRoot(), 'bin', 'lockstep.js'), ...args], o);
  }

  /** The PID of host `h`'s daemon: the one this object started, else found among the host's processes (whoever started it). */
  async daemonPid(h: 'a' | 'b'): Promise<number | undefined> {
    const daemon = [path.join(packageRoot(), 'bin', 'lockstep.js'), 'daemon'].join('\0');
    const isDaemon = (pid: number) => {
      try {
        return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(daemon);
      } catch {
        return false; // gone
      }
    };
    const started = this.hosts[h].started;
    if (started !== undefined && isDaemon(started)) return started;
    return (await this.processes(h)).find(isDaemon);
  }

  /** Starts host `h`'s daemon (as its systemd unit would), logging to hosts/<h>/daemon.log; waits until it answers. */
  async startDaemon(h: 'a' | 'b'): Promise<number> {
    const e = this.hosts[h];
    const running = await this.daemonPid(h);
    if (running) throw new LockstepError(`the daemon of lab host ${h} runs already (pid ${running})`);
    const logFile = path.join(e.fs.dirs.etc, '..', 'daemon.log');
    const out = fs.openSync(logFile, 'a');
    const [c, ...rest] = this.enter(h);
    const child = spawn(c!, [...rest, process.execPath, path.join(packageRoot(), 'bin', 'lockstep.js'), 'daemon'], { detached: true, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    child.unref();
    const pid = child.pid!;
    e.started = pid;
    const sock = path.join(e.fs.dirs.run, 'api.sock');
    await waitFor(
      `the daemon of lab host ${h} to answer`,
      async () => {
        if (!pidRunning(pid)) throw new LockstepError(`the daemon of lab host ${h} exited at start`, { hint: `see ${logFile}` });
        return socketAnswers(sock);
      },
      { timeoutMs: 15_000, intervalMs: 50 },
    );
    return pid;
  }

  /** Ends host `h`'s daemon: SIGTERM (as systemctl stop) or SIGKILL (a crash); waits until it is gone. */
  async stopDaemon(h: 'a' | 'b', signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const pid = await this.daemonPid(h);
    if (pid === undefined) return;
    process.kill(pid, signal);
    for (let i = 0; i < 100 && pidRunning(pid); i++) await sleep(50);
    if (pidRunning(pid)) process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 40 && pidRunning(pid); i++) await sleep(50);
  }

  /** Every process running in host `h` (its network namespace): its daemon and its QEMUs. None once the namespace is gone. */
  async processes(h: 'a' | 'b'): Promise<number[]> {
    const r = await run('ip', ['netns', 'pids', this.hosts[h].netns], { timeoutMs: 10_000, allowFailure: true });
    if (r.code !== 0) {
      if (!fs.existsSync(`/run/netns/${this.hosts[h].netns}`)) return [];
      throw new LockstepError(`ip netns pids ${this.hosts[h].netns} failed: ${r.stderr.trim()}`);
    }
    return r.stdout.split(/\s+/).filter(Boolean).map(Number);
  }

  /**
   * Host `h` loses power: its cables go dead first (nothing it had open is
   * reset, as when a machine vanishes), then every process in it is killed
   * (SIGKILL: no clean-up). Its disks and state stay. Returns when its last
   * cable went dead (wall-clock ms) and the processes killed. `lab.hosts.heal()` and
   * `startDaemon(h)` bring it back (as a boot: no QEMU, the daemon on its
   * old state).
   */
  async powerLoss(lab: LabHosts, h: 'a' | 'b'): Promise<{ deadAt: number; pids: number[] }> {
    await lab.isolate(h);
    // From here nothing the host sends reaches anyone: the moment a client's request can no longer reach it.
    const deadAt = Date.now();
    return { deadAt, pids: await this.killAll(h) };
  }

  /** Host `h` reboots: every process in it killed (the kernel resets their connections), its cables fine. */
  async crash(h: 'a' | 'b'): Promise<number[]> {
    return this.killAll(h);
  }

  private async killAll(h: 'a' | 'b'): Promise<number[]> {
    const pids = await this.processes(h);
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone already */
      }
    }
    for (let i = 0; i < 100 && pids.some((p) => pidRunning(p)); i++) await sleep(50);
    return pids;
  }

  async remove(): Promise<void> {
    await this.stopDaemon('a');
    await this.stopDaemon('b');
    for (const e of Object.values(this.hosts)) await e.fs.remove();
  }
}
