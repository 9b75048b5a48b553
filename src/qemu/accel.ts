/**
 * Whether KVM really works here. /dev/kvm existing proves nothing: on some
 * hosts (nested virtualisation without the right support) KVM guests hang.
 * So a small guest is booted with KVM for a few seconds and must reach its
 * ready marker on the serial console. The answer is cached per host kernel
 * and binary.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { cacheDir } from '../util/paths.js';
import { sleep } from '../util/time.js';
import { QemuProcess } from './process.js';

export type Accel = 'kvm' | 'tcg';

export interface KvmProbeResult {
  works: boolean;
  reason: string;
  /** Milliseconds from start to the ready marker, when it worked. */
  bootMs?: number;
  checkedAt: string;
}

export interface KvmProbeOptions {
  binary: string;
  kernel: string;
  initrd: string;
  readyMarker: string;
  timeoutMs?: number;
  /** Ignore a cached answer. */
  fresh?: boolean;
}

function cacheFile(binary: string): string {
  const st = fs.statSync(binary);
  const id = crypto
    .createHash('sha256')
    .update(`${os.release()}\n${binary}\n${st.size}\n${st.mtimeMs}\nkvm-probe-v1`)
    .digest('hex')
    .slice(0, 16);
  return path.join(cacheDir(), 'probe', `kvm-${id}.json`);
}

export async function probeKvm(opts: KvmProbeOptions): Promise<KvmProbeResult> {
  const file = cacheFile(opts.binary);
  if (!opts.fresh) {
    try {
      return JSON.parse(fs.readFileSync(file, 'utf8')) as KvmProbeResult;
    } catch {
      /* probe */
    }
  }
  const result = await bootWithKvm(opts);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  return result;
}

async function bootWithKvm(opts: KvmProbeOptions): Promise<KvmProbeResult> {
  const checkedAt = new Date().toISOString();
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { works: false, reason: '/dev/kvm is missing or not accessible', checkedAt };
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-kvm-'));
  const serial = path.join(dir, 'serial.log');
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const q = new QemuProcess({
    name: 'kvm-probe',
    binary: opts.binary,
    args: [
      '-accel', 'kvm', '-cpu', 'qemu64', '-m', '128', '-smp', '1', '-nodefaults', '-display', 'none',
      '-serial', `file:${serial}`, '-kernel', opts.kernel, '-initrd', opts.initrd, '-append', 'console=ttyS0 quiet',
      '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0',
    ],
    logFile: path.join(dir, 'qemu.log'),
  });
  const start = Date.now();
  try {
    while (Date.now() - start < timeoutMs) {
      if (!q.running) return { works: false, reason: `QEMU exited: ${q.logTail(3)}`, checkedAt };
      const text = fs.existsSync(serial) ? fs.readFileSync(serial, 'utf8') : '';
      if (text.includes(opts.readyMarker)) return { works: true, reason: 'the test guest booted with KVM', bootMs: Date.now() - start, checkedAt };
      await sleep(100);
    }
    return { works: false, reason: `the test guest did not boot with KVM within ${timeoutMs / 1000} s (guests hang on this host)`, checkedAt };
  } finally {
    await q.stop(500);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
