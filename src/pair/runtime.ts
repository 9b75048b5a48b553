/**
 * Which QEMU and accelerator a config runs with, and the kernel it boots.
 * qemu.accel auto: KVM where it works (decided by booting), else TCG; with the
 * configured QEMU, else the lab QEMU (lockstep's fixes: a QEMU that lacks one
 * COLO needs with that accelerator is refused, see qemu/fixes.ts).
 */
import type { ResolvedConfig } from '../config/load.js';
import { locateQemu, probeQemu, assertColoCapable } from '../qemu/discover.js';
import { assertColoFixes } from '../qemu/fixes.js';
import { probeKvm } from '../qemu/accel.js';
import { ensureGuest } from '../lab/guest.js';
import { ensureLabQemu, FIRMWARE_DIRS } from '../lab/qemu-build.js';
import fs from 'node:fs';
import type { Runtime } from './plan.js';

export interface ResolveOptions {
  onStep?: (msg: string) => void;
  onUpdate?: (msg: string) => void;
}

export async function resolveRuntime(c: ResolvedConfig, o: ResolveOptions = {}): Promise<Runtime & { reason: string }> {
  const needDemo = c.vm.kernel === 'demo' || c.qemu.accel === 'auto';
  const guest = needDemo ? await ensureGuest({ onProgress: o.onStep }) : undefined;
  const kernel = c.vm.kernel === 'demo' ? guest!.kernel : c.vm.kernel;
  const initrd = c.vm.kernel === 'demo' ? guest!.initrd : c.vm.initrd;
  let binary: string;
  let accel: 'kvm' | 'tcg';
  // Debian's firmware directories: the lab build ships no blobs, and a QEMU the
  // user points at may not either; for the distribution's QEMU they are its defaults.
  let dataDirs: string[] = FIRMWARE_DIRS.filter((d) => fs.existsSync(d));
  let reason: string;
  if (c.qemu.accel === 'auto') {
    const loc = locateQemu({ configured: c.qemu.binary });
    o.onStep?.('checking whether KVM works (cached after the first time)');
    const kvm = await probeKvm({ binary: loc.binary, kernel: guest!.kernel, initrd: guest!.initrd, readyMarker: guest!.readyMarker });
    if (kvm.works && c.qemu.binary) {
      binary = loc.binary;
      accel = 'kvm';
      reason = 'KVM works; the configured QEMU';
    } else if (kvm.works) {
      const lab = await ensureLabQemu({ onStep: o.onStep, onUpdate: o.onUpdate });
      binary = lab.binary;
      dataDirs = lab.dataDirs;
      accel = 'kvm';
      reason = 'KVM works; the lab QEMU (it has the fixes COLO needs)';
    } else if (c.qemu.binary) {
      binary = loc.binary;
      accel = 'tcg';
      reason = `KVM not usable (${kvm.reason}); TCG with the configured QEMU`;
    } else {
      const lab = await ensureLabQemu({ onStep: o.onStep, onUpdate: o.onUpdate });
      binary = lab.binary;
      dataDirs = lab.dataDirs;
      accel = 'tcg';
      reason = `KVM not usable (${kvm.reason}); TCG with the lab QEMU`;
    }
  } else if (c.qemu.accel === 'tcg' && !c.qemu.binary) {
    const lab = await ensureLabQemu({ onStep: o.onStep, onUpdate: o.onUpdate });
    binary = lab.binary;
    dataDirs = lab.dataDirs;
    accel = 'tcg';
    reason = 'TCG as configured, with the lab QEMU';
  } else {
    binary = locateQemu({ configured: c.qemu.binary }).binary;
    accel = c.qemu.accel;
    reason = `${accel.toUpperCase()} as configured`;
  }
  const info = await probeQemu(binary);
  assertColoCapable(info, { tls: c.replication.tls });
  // The fixes COLO needs with this accelerator: refused without them, unless the config accepts the risk.
  for (const w of assertColoFixes(info, accel, c.qemu.allowMissingFixes)) o.onStep?.(`warning: ${w}`);
  return { binary, accel, dataDirs, kernel, initrd, reconnectMs: info.features.reconnectMs, reason };
}
