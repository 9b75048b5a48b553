/**
 * Supervision of QEMU processes started by lockstep. Every child is tracked
 * by PID and ended by lockstep itself: on close(), and, as a last resort, when
 * the Node process exits or is interrupted. Nothing is ever killed by name.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { LockstepError } from '../util/errors.js';
import { sleep, waitFor } from '../util/time.js';
import { QmpClient } from '../qmp/client.js';
import { QmpConnectError } from '../qmp/errors.js';
import { pidAlive, pidRunning } from '../util/proc.js';

export { pidAlive };

const live = new Set<QemuProcess>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const q of live) q.killNow();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const q of live) q.killNow();
      process.kill(process.pid, sig);
    });
  }
}

export interface SpawnQemuOptions {
  /** A short name for logs and errors ("primary"). */
  name: string;
  binary: string;
  args: string[];
  /** stdout+stderr of QEMU go here. */
  logFile: string;
  /** Run through a wrapper, e.g. ['ip', 'netns', 'exec', 'hostA']. */
  wrapper?: string[];
  env?: NodeJS.ProcessEnv;
  /**
   * Let the QEMU outlive this Node process (lockstep up returns while the VMs
   * run). It is then not ended by the exit hooks; its PID goes to the state
   * file and `lockstep down` ends it.
   */
  detached?: boolean;
}

export class QemuProcess {
  readonly name: string;
  readonly logFile: string;
  private readonly child: ChildProcess;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(opts: SpawnQemuOptions) {
    installExitHooks();
    this.name = opts.name;
    this.logFile = opts.logFile;
    const out = fs.openSync(opts.logFile, 'a');
    const [cmd, ...pre] = opts.wrapper && opts.wrapper.length ? [...opts.wrapper, opts.binary] : [opts.binary];
    this.child = spawn(cmd!, [...pre, ...opts.args], { stdio: ['ignore', out, out], env: opts.env ?? process.env, detached: opts.detached === true });
    fs.closeSync(out);
    if (opts.detached) this.child.unref();
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        live.delete(this);
        resolve(this.exitInfo);
      });
      this.child.once('error', (err) => {
        fs.appendFileSync(opts.logFile, `\nlockstep: cannot start ${cmd}: ${err.message}\n`);
        this.exitInfo = { code: 127, signal: null };
        live.delete(this);
        resolve(this.exitInfo);
      });
    });
    if (!opts.detached) live.add(this);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  get exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.exitInfo;
  }

  /** Resolves when the process has exited. */
  wait(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.exited;
  }

  /** The last lines of QEMU's own output, for error messages. */
  logTail(lines = 10): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /** Sends a signal to this QEMU (by PID). */
  signal(sig: NodeJS.Signals): void {
    if (!this.running || this.child.pid === undefined) return;
    try {
      process.kill(this.child.pid, sig);
    } catch {
      /* already gone */
    }
  }

  /** SIGKILL, synchronously, for exit hooks. */
  killNow(): void {
    this.signal('SIGKILL');
  }

  /**
   * Ends the process: SIGTERM, then SIGKILL after `graceMs`. Resolves once it
   * has exited.
   */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.signal('SIGTERM');
    const t = sleep(graceMs).then(() => 'timeout' as const);
    if ((await Promise.race([this.exited, t])) === 'timeout') {
      this.signal('SIGKILL');
      await this.exited;
    }
  }

  /** Throws a helpful error if the process has already exited. */
  assertRunning(what: string): void {
    if (this.running) return;
    const st = this.exitInfo!;
    throw new LockstepError(`QEMU ${this.name} exited (${st.signal ?? `code ${st.code}`}) ${what}:\n${this.logTail()}`, {
      hint: `QEMU's full output is in ${this.logFile}`,
    });
  }
}

/** PIDs of all QEMU processes this Node process started and that still run. */
export function livePids(): number[] {
  return [...live].map((q) => q.pid);
}

/** Stops every QEMU this Node process started. */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((q) => q.stop()));
}

/**
 * Whether `pid` is still the QEMU lockstep started: alive, and its command
 * line contains `marker` (e.g. its QMP socket path). Guards against a PID
 * that was reused by an unrelated process after the QEMU died.
 */
export function isOurQemu(pid: number, marker: string): boolean {
  if (!pidRunning(pid)) return false;
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (cmdline.includes(marker)) return true;
    // A zombie (exited, not yet reaped) has an empty command line.
    return false;
  } catch {
    return false;
  }
}

/** Ends a QEMU that this Node process did not start (found in a state file): SIGTERM, then SIGKILL. */
export async function stopPid(pid: number, marker: string, graceMs = 3000): Promise<void> {
  if (!isOurQemu(pid, marker)) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!isOurQemu(pid, marker)) return;
    await sleep(50);
  }
  if (isOurQemu(pid, marker)) process.kill(pid, 'SIGKILL');
  const hard = Date.now() + 5000;
  while (isOurQemu(pid, marker) && Date.now() < hard) await sleep(50);
}

/** Bounds the retries of a refused QMP connection to a starting QEMU (with the time bound, whichever comes first). */
const CONNECT_ATTEMPTS_MAX = 250;

/**
 * Connects to the QMP socket of a QEMU that `proc` just started: waits for
 * the socket file, then connects. QEMU binds its socket (the file appears) a
 * moment before it listens on it, and a connection in between is refused
 * (seen under load: ECONNREFUSED on a socket that answered a moment later):
 * refused connections are tried again within the same bound. Says so at
 * once if the QEMU exits meanwhile.
 */
export async function connectStartingQemu(proc: QemuProcess, socket: string, o: { timeoutMs: number; what: string }): Promise<QmpClient> {
  const deadline = Date.now() + o.timeoutMs;
  await waitFor(
    `${o.what} to open its QMP socket`,
    () => {
      proc.assertRunning(o.what);
      return fs.existsSync(socket);
    },
    { timeoutMs: o.timeoutMs, intervalMs: 20 },
  );
  for (let attempt = 1; ; attempt++) {
    try {
      return await QmpClient.connect(socket, { timeoutMs: Math.max(1, deadline - Date.now()) });
    } catch (err) {
      proc.assertRunning(o.what);
      const refused = err instanceof QmpConnectError && (err.cause as NodeJS.ErrnoException | undefined)?.code === 'ECONNREFUSED';
      if (!refused || Date.now() >= deadline || attempt >= CONNECT_ATTEMPTS_MAX) throw err;
      await sleep(20);
    }
  }
}
