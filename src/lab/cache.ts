/**
 * Helpers for the per-machine build cache: a lock so two processes never
 * build the same thing at once, and an atomic publish so a half-built result
 * is never visible under its final name.
 */
import fs from 'node:fs';
import path from 'node:path';
import { LockstepError } from '../util/errors.js';
import { sleep } from '../util/time.js';
import { pidAlive } from '../util/proc.js';

/**
 * Runs `fn` holding a lock directory. A lock left by a dead process is taken
 * over; a live holder is waited for up to `timeoutMs`.
 */
export async function withDirLock<T>(lockDir: string, what: string, fn: () => Promise<T>, timeoutMs = 30 * 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let told = false;
  for (;;) {
    try {
      fs.mkdirSync(lockDir);
      fs.writeFileSync(path.join(lockDir, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let holder = NaN;
      try {
        holder = Number(fs.readFileSync(path.join(lockDir, 'pid'), 'utf8'));
      } catch {
        /* being created or removed right now */
      }
      if (Number.isFinite(holder) && !pidAlive(holder)) {
        fs.rmSync(lockDir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw new LockstepError(`another process (pid ${holder}) has been busy with ${what} for too long`, {
          hint: `if no such process exists, remove ${lockDir}`,
        });
      }
      if (!told) {
        process.stderr.write(`waiting for pid ${holder}, which is busy with ${what}\n`);
        told = true;
      }
      await sleep(1000);
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lockDir, { recursive: true, force: true });
  }
}

/** Moves a finished build directory to its final name in one rename. */
export function publishDir(from: string, to: string): void {
  fs.rmSync(to, { recursive: true, force: true });
  fs.renameSync(from, to);
}

/** Removes work directories (<prefix>*) that a killed build left behind. Call with the lock held. */
export function removeStaleWork(dir: string, prefix: string): void {
  for (const f of fs.readdirSync(dir)) {
    if (f.startsWith(prefix)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
  }
}
