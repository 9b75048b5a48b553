/**
 * The secondary's active and hidden buffers (COLO's block replication):
 * qcow2 files on a RAM disk that hold the secondary's own writes and the
 * copies-on-write of the primary's, that is, guest data. They live in a
 * directory of their own in bufferDir (plan.ts, bufferDirOf), made 0700 and
 * exclusively by lockstep's user, and each buffer is created anew there
 * (O_EXCL, 0600, never through a link) before qemu-img writes its header:
 * another user of the host can neither read them, nor plant a file or a
 * symbolic link that lockstep would then write through or use.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createImage } from '../qemu/images.js';
import { createExclusive, ensurePrivateDir } from '../util/files.js';

export interface Buffers {
  active: string;
  hidden: string;
}

/** Fresh, empty buffers of `sizeBytes` (virtual) in their private directory; what was there of ours goes first. */
export async function createBuffers(b: Buffers, sizeBytes: number, o: { create?: typeof createImage } = {}): Promise<void> {
  const create = o.create ?? createImage;
  const dir = path.dirname(b.active);
  if (path.dirname(b.hidden) !== dir) throw new Error(`the buffers ${b.active} and ${b.hidden} must share their directory`);
  ensurePrivateDir(dir);
  for (const f of [b.active, b.hidden]) {
    // Ours (the directory is): an earlier secondary's buffer, never someone else's.
    fs.rmSync(f, { force: true });
    createExclusive(f, 0o600);
    await create(f, sizeBytes, { overwrite: true });
  }
}

/**
 * Removes buffers; missing ones are fine. Their directory stays (empty,
 * 0700, ours): removed, its name, which anyone can see once it exists, could
 * be taken by another user before the next secondary needs it.
 */
export function removeBuffers(files: string[]): void {
  for (const f of files) fs.rmSync(f, { force: true });
}
