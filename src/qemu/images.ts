/**
 * Disk images, through qemu-img. Nothing here overwrites an existing file
 * unless asked to explicitly.
 */
import fs from 'node:fs';
import { run, which } from '../util/exec.js';
import { LockstepError } from '../util/errors.js';

/** The qemu-img to use: $LOCKSTEP_QEMU_IMG, else the one on PATH. */
export function qemuImg(): string {
  const p = process.env.LOCKSTEP_QEMU_IMG ?? which('qemu-img');
  if (!p) throw new LockstepError('qemu-img not found', { hint: 'apt-get install qemu-utils' });
  return p;
}

export async function createImage(file: string, sizeBytes: number, opts: { format?: 'qcow2' | 'raw'; overwrite?: boolean; backing?: string } = {}): Promise<void> {
  if (fs.existsSync(file) && !opts.overwrite) {
    throw new LockstepError(`refusing to overwrite existing image ${file}`, { hint: 'remove it yourself, or pass the explicit overwrite flag' });
  }
  const args = ['create', '-q', '-f', opts.format ?? 'qcow2'];
  if (opts.backing) args.push('-b', opts.backing, '-F', 'qcow2');
  args.push(file, String(sizeBytes));
  await run(qemuImg(), args, { timeoutMs: 30_000, what: `qemu-img create ${file}` });
}

export async function imageInfo(file: string): Promise<{ format: string; 'virtual-size': number; 'actual-size'?: number }> {
  const r = await run(qemuImg(), ['info', '-U', '--output=json', file], { timeoutMs: 30_000, what: `qemu-img info ${file}` });
  return JSON.parse(r.stdout) as { format: string; 'virtual-size': number };
}

/** Reads bytes from an image, also while a QEMU has it open (force-share). */
export async function readImageBytes(file: string, format: string, offset: number, length: number): Promise<Buffer> {
  const qemuIo = process.env.LOCKSTEP_QEMU_IO ?? which('qemu-io');
  if (!qemuIo) throw new LockstepError('qemu-io not found', { hint: 'apt-get install qemu-utils' });
  const r = await run(qemuIo, ['-r', '-U', '-f', format, '-c', `read -v ${offset} ${length}`, file], { timeoutMs: 30_000, what: `qemu-io read ${file}` });
  // Lines: "00000200:  63 6f 75 ...  counter=..."
  const bytes: number[] = [];
  for (const line of r.stdout.split('\n')) {
    const m = /^[0-9a-f]{8}:\s+((?:[0-9a-f]{2}\s)+)/.exec(line);
    if (!m) continue;
    for (const h of m[1]!.trim().split(/\s+/)) bytes.push(parseInt(h, 16));
  }
  return Buffer.from(bytes.slice(0, length));
}
