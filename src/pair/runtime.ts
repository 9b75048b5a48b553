/**
 * Which QEMU and accelerator a config runs with, and the kernel it boots.
 * The QEMU: qemu.binary (the VM's, else its host file's), else $LOCKSTEP_QEMU,
 * else the installed lockstep-qemu package (the newest line), else
 * lockstep's own build (the lab QEMU, built once); never the distribution's
 * by default, which lacks fixes COLO needs. The accelerator: qemu.accel,
 * where auto means KVM where it works (decided by booting that QEMU), else
 * TCG. A QEMU that lacks a fix COLO needs with that accelerator is refused
 * (qemu/fixes.ts).
 */
import type { ResolvedConfig } from '../config/load.js';
import { chosenQemu, probeQemu, assertColoCapable } from '../qemu/discover.js';
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
  // Debian's firmware directories: lockstep's QEMU ships no blobs, and a QEMU the
  // user points at may not either; for the distribution's QEMU they are its defaults.
  let dataDirs: string[] = FIRMWARE_DIRS.filter((d) => fs.existsSync(d));
  let binary: string;
  let from: string;
  const chosen = chosenQemu({ configured: c.qemu.binary });
  if (chosen) {
    binary = chosen.binary;
    from = chosen.source === 'config' ? 'qemu.binary' : chosen.source === 'env' ? '$LOCKSTEP_QEMU' : `the installed package (${binary})`;
  } else {
    const lab = await ensureLabQemu({ onStep: o.onStep, onUpdate: o.onUpdate });
    binary = lab.binary;
    dataDirs = lab.dataDirs;
    from = "lockstep's own build";
  }
  let accel: 'kvm' | 'tcg';
  let reason: string;
  if (c.qemu.accel === 'auto') {
    o.onStep?.('checking whether KVM works (cached after the first time)');
    const kvm = await probeKvm({ binary, kernel: guest!.kernel, initrd: guest!.initrd, readyMarker: guest!.readyMarker });
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
