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
import net from 'node:net';

export const API_PORT = 7700;
/** Where the lab's daemons also serve their metrics in plain HTTP (on the management network). */
export const METRICS_PORT = 9477;
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
        await d.cli(n, ['host', 'init', '--name', n, '--replication', lab.addr.replication[n], '--heartbeat', `${lab.addr.heartbeat[n]},${lab.addr.replication[n]}`, '--api', `${lab.addr.mgmt[n]}:${API_PORT}`, '--metrics', `${lab.addr.mgmt[n]}:${METRICS_PORT}`], { check: true });
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

  /**
   * A lockstep command that runs until it is ended (lockstep dashboard, events --follow), started inside host `h`;
   * its output lines go to `onLine`. stop() ends it (SIGINT, as Ctrl-C, then SIGKILL) and waits until it is gone.
   */
  spawnCli(h: LabHostName, args: string[], onLine: (line: string) => void): { pid: number; stop: () => Promise<void> } {
    const [c, ...rest] = this.enter(h);
    const child = spawn(c!, [...rest, process.execPath, path.join(packageRoot(), 'bin', 'lockstep.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '';
    const take = (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        onLine(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    const pid = child.pid!;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    return {
      pid,
      stop: async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        // The namespace tools exec the command: the signal reaches lockstep itself, as Ctrl-C would.
        child.kill('SIGINT');
        const ended = await Promise.race([gone.then(() => true), sleep(3000).then(() => false)]);
        if (!ended) child.kill('SIGKILL');
        await gone;
      },
    };
  }

  /**
   * A TCP port on 127.0.0.1 of the calling process (the tests' namespace) that reaches the same port on 127.0.0.1
   * inside host `h` (a browser here, the dashboard's local port there, which checks that it is asked as
   * 127.0.0.1:PORT): a relay inside the host listens on a unix socket in its /run/lockstep, which both sides see, and
   * a relay here takes the TCP connections to it. The port is chosen free here; start the host's side on it.
   */
  async loopbackBridge(h: LabHostName): Promise<{ port: number; close: () => Promise<void> }> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as net.AddressInfo).port;
    const sockName = `bridge-${port}.sock`;
    const inside = path.join(HOST_DIRS.run, sockName);
    const outside = path.join(this.hosts[h].fs.dirs.run, sockName);
    fs.rmSync(outside, { force: true });
    const relay = [
      "const net = require('node:net');",
      'const [sock, port] = process.argv.slice(1);',
      "net.createServer((c) => { const u = net.connect(Number(port), '127.0.0.1'); c.pipe(u).pipe(c); c.on('error', () => u.destroy()); u.on('error', () => c.destroy()); }).listen(sock);",
    ].join('\n');
    const [c, ...rest] = this.enter(h);
    const child = spawn(c!, [...rest, process.execPath, '-e', relay, inside, String(port)], { stdio: 'ignore' });
    server.on('connection', (conn) => {
      const up = net.connect(outside);
      conn.pipe(up).pipe(conn);
      conn.on('error', () => up.destroy());
      up.on('error', () => conn.destroy());
    });
    try {
      await waitFor(`the loopback relay in lab host ${h}`, () => fs.existsSync(outside), { timeoutMs: 10_000, intervalMs: 50 });
    } catch (err) {
      child.kill('SIGKILL');
      server.close();
      throw err;
    }
    return {
      port,
      close: async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
        });
        child.kill('SIGKILL');
        fs.rmSync(outside, { force: true });
      },
    };
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
