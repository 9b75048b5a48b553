/**
 * An unprotected demo-guest VM, for comparisons (latency without COLO) and
 * for checking the guest itself.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QemuProcess } from '../qemu/process.js';
import { plainArgs } from '../qemu/cmdline.js';
import { createImage } from '../qemu/images.js';
import { waitForSerial } from '../qemu/serial.js';
import { findFreePortRange } from '../util/net.js';
import type { LabRuntime } from './runtime.js';

export interface PlainVm {
  proc: QemuProcess;
  dir: string;
  serialLog: string;
  httpPort: number;
  echoPort: number;
  httpBase: string;
  bootMs: number;
  stop(opts?: { removeDir?: boolean }): Promise<void>;
}

export async function startPlainVm(rt: Pick<LabRuntime, 'binary' | 'accel' | 'dataDirs' | 'guest'>, o: { dir?: string } = {}): Promise<PlainVm> {
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-plain-'));
  fs.mkdirSync(dir, { recursive: true });
  const image = path.join(dir, 'disk.qcow2');
  await createImage(image, 64 * 1024 * 1024);
  const base = await findFreePortRange(['127.0.0.1'], 2);
  const serialLog = path.join(dir, 'serial.log');
  const args = plainArgs(
    {
      name: 'plain',
      accel: rt.accel,
      memoryMiB: 128,
      cpus: 1,
      kernel: rt.guest.kernel,
      initrd: rt.guest.initrd,
      dataDirs: rt.dataDirs,
      serialLog,
      qmpSockets: [path.join(dir, 'qmp.sock')],
      nic: {
        mode: 'user',
        forwards: [
          { hostAddr: '127.0.0.1', hostPort: base, guestPort: 80 },
          { hostAddr: '127.0.0.1', hostPort: base + 1, guestPort: 7 },
        ],
      },
    },
    { image, format: 'qcow2' },
  );
  const t0 = Date.now();
  const proc = new QemuProcess({ name: 'plain', binary: rt.binary, args, logFile: path.join(dir, 'qemu.log') });
  try {
    await waitForSerial(serialLog, rt.guest.readyMarker, 60_000, { alive: () => proc.assertRunning('while the guest booted') });
  } catch (err) {
    await proc.stop(500);
    throw err;
  }
  return {
    proc,
    dir,
    serialLog,
    httpPort: base,
    echoPort: base + 1,
    httpBase: `http://127.0.0.1:${base}`,
    bootMs: Date.now() - t0,
    async stop(opts = {}) {
      await proc.stop(2000);
      if (opts.removeDir) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
