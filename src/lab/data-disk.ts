/**
 * A disk image full of data for the lab: random (incompressible) bytes, so
 * that copying it costs what copying a real disk costs. The first MiB stays
 * zero: the demo guest keeps its counter in sector 1.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { run } from '../util/exec.js';
import { qemuImg } from '../qemu/images.js';

export async function createDataDisk(file: string, mib: number): Promise<void> {
  const raw = `${file}.raw-${process.pid}`;
  const fd = fs.openSync(raw, 'w');
  try {
    fs.writeSync(fd, Buffer.alloc(2 ** 20));
    for (let i = 1; i < mib; i++) fs.writeSync(fd, crypto.randomBytes(2 ** 20));
  } finally {
    fs.closeSync(fd);
  }
  try {
    await run(qemuImg(), ['convert', '-f', 'raw', '-O', 'qcow2', raw, file], { timeoutMs: 300_000, what: `qemu-img convert to ${file}` });
  } finally {
    fs.rmSync(raw, { force: true });
  }
}
