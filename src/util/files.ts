import nodeFs from 'node:fs';
import path from 'node:path';
import { LockstepError, errorMessage } from './errors.js';
import { pidRunning } from './proc.js';

/** The file operations writeFileAtomic uses (node:fs by default; tests inject their own to see the order). */
export interface AtomicWriteFs {
  openSync(file: string, flags: string, mode?: number): number;
  writeSync(fd: number, data: Uint8Array, offset: number, length: number): number;
  fsyncSync(fd: number): void;
  closeSync(fd: number): void;
  renameSync(from: string, to: string): void;
  rmSync(file: string, opts: { force: boolean }): void;
}

const realFs: AtomicWriteFs = {
  openSync: (f, flags, mode) => nodeFs.openSync(f, flags, mode),
  writeSync: (fd, data, offset, length) => nodeFs.writeSync(fd, data, offset, length),
  fsyncSync: (fd) => nodeFs.fsyncSync(fd),
  closeSync: (fd) => nodeFs.closeSync(fd),
  renameSync: (from, to) => nodeFs.renameSync(from, to),
  rmSync: (f, opts) => nodeFs.rmSync(f, opts),
};

/**
 * Replaces `file` with `text` all at once: written to a temporary file beside
 * it, then renamed over it, so a reader never sees half a file. `durable`:
 * for records that must survive a power loss (disk epochs, the witness's
 * record): the temporary file is flushed to disk (fsync) before the rename,
 * and the directory after it, so that the rename itself is on disk too.
 * If anything fails before the rename, the temporary file is removed and
 * `file` is untouched. (A failing fsync of the directory after the rename
 * throws: `file` then holds the new text, but it may not survive a crash.)
 * `mode`: the new file's permissions (before the umask).
 */
export function writeFileAtomic(file: string, text: string, o: { durable?: boolean; mode?: number; fs?: AtomicWriteFs } = {}): void {
  const fs = o.fs ?? realFs;
  const tmp = `${file}.tmp-${process.pid}`;
  const data = Buffer.from(text, 'utf8');
  let renamed = false;
  try {
    // With `mode` (a key: 0600) the file never exists with wider permissions, not even briefly
    // (created anew: one left by a crashed writer of the same pid goes first).
    if (o.mode !== undefined) fs.rmSync(tmp, { force: true });
    const fd = o.mode === undefined ? fs.openSync(tmp, 'w') : fs.openSync(tmp, 'wx', o.mode);
    try {
      for (let off = 0; off < data.length; ) {
        const n = fs.writeSync(fd, data, off, data.length - off);
        if (n <= 0) throw new Error(`writing ${tmp}: no progress at byte ${off} of ${data.length}`);
        off += n;
      }
      if (o.durable) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
    renamed = true;
  } finally {
    if (!renamed) {
      try {
        fs.rmSync(tmp, { force: true });
      } catch {
        // The original error matters more.
      }
    }
  }
  if (o.durable) {
    const dfd = fs.openSync(path.dirname(file), 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  }
}

/**
 * writeFileAtomic's durable write, without blocking the event loop: the
 * temporary file is created anew (O_EXCL, `mode`, default 0600), written,
 * flushed (fsync), renamed over `file`, and the directory flushed, each step
 * awaited. A failure before the rename removes the temporary file and leaves
 * `file` as it was. The caller must not write the same file twice at once
 * (the temporary file's name is per file and process).
 */
export async function writeFileDurable(file: string, text: string, o: { mode?: number } = {}): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  let renamed = false;
  try {
    await nodeFs.promises.rm(tmp, { force: true });
    const fh = await nodeFs.promises.open(tmp, 'wx', o.mode ?? 0o600);
    try {
      await fh.writeFile(text, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await nodeFs.promises.rename(tmp, file);
    renamed = true;
  } finally {
    if (!renamed) await nodeFs.promises.rm(tmp, { force: true }).catch(() => undefined);
  }
  const dir = await nodeFs.promises.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/**
 * Makes `dir` a directory only this process's user can enter (0700), or
 * checks that it is one: created exclusively if it does not exist (its
 * parent must, unless `parents`), else it must be a real directory (not a
 * symbolic link) owned by this user; its mode is then set to 0700. Throws
 * LockstepError, changing nothing, when `dir` is someone else's or not a
 * directory: a directory another user made (in a world-writable place such
 * as /dev/shm) is never used, and never removed.
 */
export function ensurePrivateDir(dir: string, o: { parents?: boolean } = {}): void {
  if (o.parents) nodeFs.mkdirSync(path.dirname(dir), { recursive: true, mode: 0o700 });
  try {
    nodeFs.mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new LockstepError(`cannot make the private directory ${dir}: ${errorMessage(err)}`, { hint: `check that ${path.dirname(dir)} exists and is writable` });
    }
  }
  const st = nodeFs.lstatSync(dir);
  const uid = process.getuid?.() ?? st.uid;
  if (st.isSymbolicLink() || !st.isDirectory()) {
    throw new LockstepError(`${dir} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}, where lockstep keeps files only it may read`, {
      hint: `someone else put it there: find out who (ls -l ${path.dirname(dir)}), remove it, and try again`,
    });
  }
  if (st.uid !== uid) {
    throw new LockstepError(`${dir} belongs to user ${st.uid}, not to lockstep's user (${uid}): lockstep keeps nothing in a directory another user made`, {
      hint: `find out who made it and why, remove it, and try again (ls -ld ${dir})`,
    });
  }
  if ((st.mode & 0o777) !== 0o700) nodeFs.chmodSync(dir, 0o700);
}

/** Creates `file` empty, exclusively (never over an existing file, never through a symbolic link), with `mode`. */
export function createExclusive(file: string, mode = 0o600): void {
  nodeFs.closeSync(nodeFs.openSync(file, nodeFs.constants.O_CREAT | nodeFs.constants.O_EXCL | nodeFs.constants.O_WRONLY | nodeFs.constants.O_NOFOLLOW, mode));
}

/** Blocks this thread for `ms` (a lock's short wait; never on a path that serves the network). */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Runs `fn` holding the lock file `lockFile` (created exclusively, holding
 * this process's pid), then removes it. Another process's lock is waited for
 * up to `timeoutMs`; one whose process is gone (it died holding it) is taken
 * over. For short read-modify-writes of a file that several processes share
 * (a pair's state file: the agents, the CLI, a daemon).
 */
export function withFileLock<T>(lockFile: string, fn: () => T, o: { timeoutMs?: number; alive?: (pid: number) => boolean } = {}): T {
  const timeoutMs = o.timeoutMs ?? 5000;
  const alive = o.alive ?? pidRunning;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      const fd = nodeFs.openSync(lockFile, nodeFs.constants.O_CREAT | nodeFs.constants.O_EXCL | nodeFs.constants.O_WRONLY | nodeFs.constants.O_NOFOLLOW, 0o600);
      try {
        nodeFs.writeSync(fd, `${process.pid}\n`);
      } finally {
        nodeFs.closeSync(fd);
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new LockstepError(`cannot take the lock ${lockFile}: ${errorMessage(err)}`, { hint: `check that ${path.dirname(lockFile)} exists and is writable` });
    }
    let holder = NaN;
    try {
      holder = Number(nodeFs.readFileSync(lockFile, 'utf8').trim());
    } catch {
      continue; // released meanwhile
    }
    if (Number.isSafeInteger(holder) && holder > 0 && holder !== process.pid && !alive(holder)) {
      nodeFs.rmSync(lockFile, { force: true }); // its holder died holding it
      continue;
    }
    if (performance.now() > deadline) {
      throw new LockstepError(`${lockFile} has been held by process ${Number.isNaN(holder) ? '(unknown)' : holder} for over ${timeoutMs} ms`, {
        hint: `is that process hung? (ps -p ${holder}) If it is gone, remove ${lockFile}`,
      });
    }
    sleepSync(5);
  }
  try {
    return fn();
  } finally {
    nodeFs.rmSync(lockFile, { force: true });
  }
}
