/**
 * Whether KVM really works here. /dev/kvm existing proves nothing: on some
 * hosts (nested virtualisation without the right support) KVM guests hang.
 * So a tiny guest is booted with KVM for a few seconds and must print its
 * marker on the serial console: SeaBIOS, then a 512-byte boot sector that
 * lockstep makes itself (bootSector(), below), so the probe needs nothing
 * but the QEMU and its firmware; no guest to build or download. The answer
 * is cached per host kernel and binary.
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
  /** Firmware directories (-L), where the QEMU needs them. */
  dataDirs?: string[];
  timeoutMs?: number;
  /** Ignore a cached answer. */
  fresh?: boolean;
  /** The accelerator to boot with: kvm (the probe), tcg only to test the probe itself where KVM is absent. */
  accel?: Accel;
  /** Where /dev/kvm is (tests). */
  kvmDevice?: string;
}

/** What the probe's boot sector prints on COM1. */
export const PROBE_MARKER = 'LOCKSTEP-KVM-PROBE-OK';

/**
 * A boot sector (loaded by the BIOS at 0000:7C00, real mode) that writes
 * PROBE_MARKER to COM1 (I/O port 0x3F8) and halts:
 *
 *   7C00 FA           cli
 *   7C01 FC           cld
 *   7C02 31 C0        xor  ax, ax
 *   7C04 8E D8        mov  ds, ax
 *   7C06 BE 17 7C     mov  si, msg        ; 0x7C17
 *   7C09 BA F8 03     mov  dx, 0x3F8
 *   7C0C AC     next: lodsb
 *   7C0D 84 C0        test al, al
 *   7C0F 74 03        jz   done
 *   7C11 EE           out  dx, al
 *   7C12 EB F8        jmp  next
 *   7C14 F4     done: hlt
 *   7C15 EB FD        jmp  done
 *   7C17        msg:  PROBE_MARKER, CR, LF, 0
 *   7DFE 55 AA        boot signature
 */
export function bootSector(): Buffer {
  const code = [0xfa, 0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0xbe, 0x17, 0x7c, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xf4, 0xeb, 0xfd];
  const sector = Buffer.alloc(512);
  Buffer.from(code).copy(sector, 0);
  Buffer.from(`${PROBE_MARKER}\r\n\0`, 'latin1').copy(sector, code.length);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

function cacheFile(binary: string): string {
  const st = fs.statSync(binary);
  const id = crypto
    .createHash('sha256')
    .update(`${os.release()}\n${binary}\n${st.size}\n${st.mtimeMs}\nkvm-probe-v2`)
    .digest('hex')
    .slice(0, 16);
  return path.join(cacheDir(), 'probe', `kvm-${id}.json`);
}

export async function probeKvm(opts: KvmProbeOptions): Promise<KvmProbeResult> {
  // Only a real KVM probe is cached: a TCG boot (the probe's own test) says nothing about KVM.
  if ((opts.accel ?? 'kvm') !== 'kvm') return bootProbe(opts);
  // No device, no KVM: said at once, nothing booted, nothing cached (the device may appear later).
  const device = opts.kvmDevice ?? '/dev/kvm';
  try {
    fs.accessSync(device, fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { works: false, reason: `${device} is missing or not accessible`, checkedAt: new Date().toISOString() };
  }
  const file = cacheFile(opts.binary);
  if (!opts.fresh) {
    try {
      return JSON.parse(fs.readFileSync(file, 'utf8')) as KvmProbeResult;
    } catch {
      /* probe */
    }
  }
  const result = await bootProbe(opts);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  return result;
}

async function bootProbe(opts: KvmProbeOptions): Promise<KvmProbeResult> {
  const checkedAt = new Date().toISOString();
  const accel = opts.accel ?? 'kvm';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-kvm-'));
  const serial = path.join(dir, 'serial.log');
  const disk = path.join(dir, 'boot.img');
  fs.writeFileSync(disk, bootSector());
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const q = new QemuProcess({
    name: 'kvm-probe',
    binary: opts.binary,
    args: [
      '-accel', accel, '-machine', 'pc', '-m', '16', '-smp', '1', '-nodefaults', '-display', 'none',
      ...(opts.dataDirs ?? []).flatMap((d) => ['-L', d]),
      '-serial', `file:${serial}`, '-drive', `file=${disk},format=raw,if=ide`, '-boot', 'c',
    ],
    logFile: path.join(dir, 'qemu.log'),
  });
  const start = Date.now();
  try {
    while (Date.now() - start < timeoutMs) {
      const text = fs.existsSync(serial) ? fs.readFileSync(serial, 'latin1') : '';
      if (text.includes(PROBE_MARKER)) return { works: true, reason: `a boot sector ran with ${accel.toUpperCase()}`, bootMs: Date.now() - start, checkedAt };
      if (!q.running) return { works: false, reason: `QEMU exited: ${q.logTail(3)}`, checkedAt };
      await sleep(50);
    }
    return { works: false, reason: `a boot sector did not run with ${accel.toUpperCase()} within ${timeoutMs / 1000} s (guests hang on this host)`, checkedAt };
  } finally {
    await q.stop(500);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
