import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where lockstep keeps what it builds once per machine (the lab QEMU, the
 * demo guest, probe results): $LOCKSTEP_CACHE, else $XDG_CACHE_HOME/lockstep,
 * else ~/.cache/lockstep. Never inside the repository.
 */
export function cacheDir(): string {
  if (process.env.LOCKSTEP_CACHE) return path.resolve(process.env.LOCKSTEP_CACHE);
  const xdg = process.env.XDG_CACHE_HOME;
  return path.join(xdg ? xdg : path.join(os.homedir(), '.cache'), 'lockstep');
}

/** The repository (or installed package) root: holds patches/ and package.json. */
export function packageRoot(): string {
  // dist/src/util/paths.js → root
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.resolve(here, '..', '..', '..');
}

/** Where volatile per-run files go (sockets, active/hidden buffers): a RAM disk when there is one. */
export function runtimeBase(): string {
  if (process.env.LOCKSTEP_RUNTIME) return path.resolve(process.env.LOCKSTEP_RUNTIME);
  return '/dev/shm';
}

let version: string | undefined;
/** lockstep's version, from its package.json. */
export function lockstepVersion(): string {
  if (version === undefined) {
    try {
      version = String((JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version?: unknown }).version ?? 'unknown');
    } catch {
      version = 'unknown';
    }
  }
  return version;
}
