import fs from 'node:fs';

/**
 * Replaces `file` with `text` all at once: written to a temporary file beside
 * it, then renamed over it, so a reader never sees half a file. `durable`:
 * flushed to disk (fsync) before the rename, for records that must survive a
 * power loss (disk generations).
 */
export function writeFileAtomic(file: string, text: string, o: { durable?: boolean } = {}): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, text);
    if (o.durable) fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}
