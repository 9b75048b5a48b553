/**
 * Which QEMU runs the lab's VMs: always the lab QEMU (lockstep's fixes, P1-P3:
 * the distribution's lacks them, and P3 matters under KVM too), with KVM where
 * KVM works (decided by booting the demo guest with it), else under TCG (KVM
 * guests hang on many nested hosts; stock QEMU cannot run COLO under TCG).
 */
import { probeKvm, type Accel } from '../qemu/accel.js';
import { locateQemu } from '../qemu/discover.js';
import { ensureLabQemu, type BuildOptions } from './qemu-build.js';
import { ensureGuest, type GuestImage } from './guest.js';

export interface LabRuntime {
  binary: string;
  accel: Accel;
  dataDirs: string[];
  guest: GuestImage;
  /** Why this choice, for status output. */
  reason: string;
}

export interface RuntimeOptions extends BuildOptions {
  onProgress?: (msg: string) => void;
  /** Force TCG with the lab QEMU even where KVM works ($LOCKSTEP_ACCEL=tcg). */
  forceTcg?: boolean;
}

export async function labRuntime(opts: RuntimeOptions = {}): Promise<LabRuntime> {
  const guest = await ensureGuest({ onProgress: opts.onProgress });
  const forceTcg = opts.forceTcg ?? process.env.LOCKSTEP_ACCEL === 'tcg';
  if (!forceTcg) {
    const system = locateQemu();
    opts.onProgress?.('checking whether KVM works (boots the demo guest with KVM; cached after the first time)');
    const kvm = await probeKvm({ binary: system.binary, kernel: guest.kernel, initrd: guest.initrd, readyMarker: guest.readyMarker });
    const lab = await ensureLabQemu(opts);
    if (kvm.works) return { binary: lab.binary, accel: 'kvm', dataDirs: lab.dataDirs, guest, reason: `KVM works (${kvm.reason}): the lab QEMU with KVM` };
    opts.onProgress?.(`KVM not usable (${kvm.reason}): using the lab QEMU under TCG`);
    return { binary: lab.binary, accel: 'tcg', dataDirs: lab.dataDirs, guest, reason: `KVM not usable: ${kvm.reason}` };
  }
  const lab = await ensureLabQemu(opts);
  return { binary: lab.binary, accel: 'tcg', dataDirs: lab.dataDirs, guest, reason: 'TCG forced' };
}
