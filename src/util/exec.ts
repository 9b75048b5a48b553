import { spawn, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { LockstepError } from './errors.js';

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the command (SIGKILL on its process group) after this long. */
  timeoutMs?: number;
  /** Append stdout and stderr to this file. */
  logFile?: string;
  /** Called with each line of output (stdout and stderr). */
  onLine?: (line: string) => void;
  /** Feed this to stdin. */
  input?: string | Buffer;
  /** Resolve with the result instead of throwing on a non-zero exit. */
  allowFailure?: boolean;
  /** What this command is for, used in errors ("building QEMU"). */
  what?: string;
  hint?: string;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The process groups of commands running now: ended with this process (exit, SIGINT, SIGTERM, SIGHUP), never left behind. */
const running = new Set<number>();
let hooksInstalled = false;

function killRunning(): void {
  for (const pgid of running) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  running.clear();
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', killRunning);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = () => {
      // A program that handles the signal itself (the daemon, an agent: a graceful stop) ends with process.exit, and
      // the exit hook ends the commands then; only a signal that would kill this process at once is taken over here.
      if (process.listenerCount(sig) > 1) return;
      killRunning();
      process.removeListener(sig, onSignal);
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

/**
 * A niced lockstep keeps its commands niced. Each command runs in a session of
 * its own (so that a timeout ends its whole group), and with the kernel's
 * autogroup scheduling a new session is a new group that competes at full
 * weight whatever its nice value: the group gets this process's nice value,
 * just after the command starts (once it leads its own session; else the
 * group would be ours), for everything it runs.
 */
function keepNice(pid: number): void {
  const nice = os.getPriority();
  if (nice <= 0) return;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const session = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
    if (session === pid) fs.writeFileSync(`/proc/${pid}/autogroup`, String(nice));
  } catch {
    /* no autogroup scheduling here, or the child is gone: nothing to keep */
  }
}

/**
 * Runs a command to completion. Output is captured (and optionally logged and
 * streamed line by line); the child runs in its own process group so a
 * timeout, or the end of this process, ends everything it started.
 */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const log = opts.logFile ? fs.openSync(opts.logFile, 'a') : undefined;
    if (log !== undefined) fs.writeSync(log, `\n$ ${cmd} ${args.join(' ')}\n`);
    const so: SpawnOptions = { cwd: opts.cwd, env: opts.env ?? process.env, detached: true, stdio: ['pipe', 'pipe', 'pipe'] };
    const child = spawn(cmd, args, so);
    if (child.pid !== undefined) {
      installExitHooks();
      running.add(child.pid);
      keepNice(child.pid);
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const partial: Record<'out' | 'err', string> = { out: '', err: '' };
    const feed = (which: 'out' | 'err', chunk: Buffer) => {
      const text = chunk.toString('utf8');
      if (which === 'out') stdout += text;
      else stderr += text;
      if (log !== undefined) fs.writeSync(log, text);
      if (opts.onLine) {
        const lines = (partial[which] + text).split(/\r?\n|\r/);
        partial[which] = lines.pop() ?? '';
        for (const l of lines) opts.onLine(l);
      }
    };
    child.stdout!.on('data', (c: Buffer) => feed('out', c));
    child.stderr!.on('data', (c: Buffer) => feed('err', c));
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            try {
              process.kill(-child.pid!, 'SIGKILL');
            } catch {
              /* already gone */
            }
          }, opts.timeoutMs);
    child.on('error', (err) => {
      if (child.pid !== undefined) running.delete(child.pid);
      clearTimeout(timer);
      if (log !== undefined) fs.closeSync(log);
      reject(
        new LockstepError(`cannot run ${cmd}${opts.what ? ` (${opts.what})` : ''}: ${err.message}`, {
          cause: err,
          hint: opts.hint ?? `is ${cmd} installed and on PATH?`,
        }),
      );
    });
    child.on('close', (code, signal) => {
      if (child.pid !== undefined) running.delete(child.pid);
      clearTimeout(timer);
      if (log !== undefined) fs.closeSync(log);
      if (opts.onLine) for (const k of ['out', 'err'] as const) if (partial[k]) opts.onLine(partial[k]);
      const result = { code, signal, stdout, stderr };
      if (timedOut) {
        reject(
          new LockstepError(`${cmd} ${opts.what ? `(${opts.what}) ` : ''}did not finish within ${opts.timeoutMs} ms and was killed`, {
            hint: opts.hint ?? (opts.logFile ? `see ${opts.logFile}` : undefined),
          }),
        );
      } else if (code !== 0 && !opts.allowFailure) {
        const tail = (stderr || stdout).trim().split('\n').slice(-15).join('\n');
        reject(
          new LockstepError(
            `${opts.what ?? `${cmd} ${args.join(' ')}`} failed (exit ${code ?? signal})${tail ? `:\n${tail}` : ''}`,
            { hint: opts.hint ?? (opts.logFile ? `the full output is in ${opts.logFile}` : undefined) },
          ),
        );
      } else {
        resolve(result);
      }
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

/** Looks a program up on PATH, like `command -v`. */
export function which(name: string, pathEnv = process.env.PATH ?? ''): string | undefined {
  if (name.includes('/')) return isExecutable(name) ? name : undefined;
  for (const dir of pathEnv.split(':')) {
    if (!dir) continue;
    const p = `${dir}/${name}`;
    if (isExecutable(p)) return p;
  }
  return undefined;
}

export function isExecutable(p: string): boolean {
  try {
    const st = fs.statSync(p);
    if (!st.isFile()) return false;
    fs.accessSync(p, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
