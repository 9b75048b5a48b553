/**
 * Which QEMU and accelerator a config runs with, and the kernel it boots:
 * found on this host, never built or downloaded (the lab and the CLI build;
 * a daemon on a real server must not). The QEMU: qemu.binary (the VM's,
 * else its host file's), else $LOCKSTEP_QEMU, else the installed
 * lockstep-qemu package (the newest line), else lockstep's own build if one
 * was made here (lockstep lab prepare); never the distribution's by default,
 * which lacks fixes COLO needs. The kernel: vm.kernel, where "demo" is the
 * demo guest if it was built here. The accelerator: qemu.accel, where auto
 * means KVM where it works (decided by booting a boot sector with that QEMU),
 * else TCG. A QEMU that lacks a fix COLO needs with that accelerator is
 * refused (qemu/fixes.ts).
 */
import type { ResolvedConfig } from '../config/load.js';
import { chosenQemu, probeQemu, assertColoCapable } from '../qemu/discover.js';
import { assertColoFixes } from '../qemu/fixes.js';
import { probeKvm } from '../qemu/accel.js';
import { BUILD_GUEST_HINT, FIRMWARE_DIRS, INSTALL_QEMU_HINT, defaultQemuLine, findDemoGuest, findOwnQemu } from '../qemu/builds.js';
import { LockstepError } from '../util/errors.js';
import fs from 'node:fs';
import type { Runtime } from './plan.js';

export interface ResolveOptions {
  onStep?: (msg: string) => void;
  onUpdate?: (msg: string) => void;
  /** Names the host in errors ("on host b"), for a daemon. */
  hostName?: string;
}

/** The binary and kernel a config needs, as found on this host; an error saying what to install when one is missing. */
export function findArtifacts(c: ResolvedConfig, o: { hostName?: string } = {}): { binary: string; from: string; dataDirs: string[]; kernel?: string; initrd?: string } {
  const where = o.hostName ? ` on host ${o.hostName}` : ' on this host';
  let kernel = c.vm.kernel;
  let initrd = c.vm.initrd;
  if (c.vm.kernel === 'demo') {
    const guest = findDemoGuest();
    if (!guest) throw new LockstepError(`VM "${c.name}" boots the demo guest (vm.kernel: demo), which is not built${where}`, { hint: BUILD_GUEST_HINT });
    kernel = guest.kernel;
    initrd = guest.initrd;
  }
  for (const [field, file] of [['vm.kernel', kernel], ['vm.initrd', initrd]] as const) {
    if (file !== undefined && !fs.existsSync(file)) throw new LockstepError(`${field} ${file} of VM "${c.name}" does not exist${where}`, { hint: 'put it there, or fix the VM file' });
  }
  // Debian's firmware directories: lockstep's QEMU ships no blobs, and a QEMU the
  // user points at may not either; for the distribution's QEMU they are its defaults.
  const firmware = FIRMWARE_DIRS.filter((d) => fs.existsSync(d));
  const chosen = chosenQemu({ configured: c.qemu.binary });
  if (chosen) {
    const from = chosen.source === 'config' ? 'qemu.binary' : chosen.source === 'env' ? '$LOCKSTEP_QEMU' : `the installed package (${chosen.binary})`;
    return { binary: chosen.binary, from, dataDirs: firmware, kernel, initrd };
  }
  const own = findOwnQemu();
  if (!own) {
    throw new LockstepError(`no QEMU with lockstep's fixes${where}: no qemu.binary, no $LOCKSTEP_QEMU, no lockstep-qemu package, and no build of lockstep's QEMU ${defaultQemuLine()}`, {
      hint: INSTALL_QEMU_HINT,
    });
  }
  return { binary: own.binary, from: `lockstep's own build (${own.line})`, dataDirs: own.dataDirs, kernel, initrd };
}

export async function resolveRuntime(c: ResolvedConfig, o: ResolveOptions = {}): Promise<Runtime & { reason: string }> {
  const { binary, from, dataDirs, kernel, initrd } = findArtifacts(c, o);
  let accel: 'kvm' | 'tcg';
  let reason: string;
  if (c.qemu.accel === 'auto') {
    o.onStep?.('checking whether KVM works (cached after the first time)');
    const kvm = await probeKvm({ binary, dataDirs });
    accel = kvm.works ? 'kvm' : 'tcg';
    reason = kvm.works ? 'KVM works' : `KVM not usable (${kvm.reason}); TCG`;
  } else {
    accel = c.qemu.accel;
    reason = `${accel.toUpperCase()} as configured`;
  }
  reason += `, with the QEMU from ${from}`;
  const info = await probeQemu(binary);
  assertColoCapable(info, { tls: c.replication.tls });
  // The fixes COLO needs with this accelerator: refused without them, unless the config accepts the risk.
  for (const w of assertColoFixes(info, accel, c.qemu.allowMissingFixes)) o.onStep?.(`warning: ${w}`);
  return { binary, accel, dataDirs, kernel, initrd, reconnectMs: info.features.reconnectMs, reason };
}
