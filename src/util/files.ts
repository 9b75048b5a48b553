import nodeFs from 'node:fs';
import path from 'node:path';

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
