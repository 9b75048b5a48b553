/**
 * Getting this machine ready to run lab VMs, on its own network, before any
 * lab host exists (a lab host's namespace has no way out, and its daemon
 * never builds anything): the demo guest, and the lab QEMU (lockstep's fixes,
 * P1-P3 and P5: the distribution's lacks them, and P3 and P5 matter under KVM too), each
 * built once and cached, then published where the daemons and `up` find them
 * (qemu/builds.ts). The accelerator: KVM where KVM works (decided by booting
 * a boot sector with the lab QEMU), else TCG.
 */
import { probeKvm, type Accel } from '../qemu/accel.js';
import { ensureLabQemu, findLabQemu, defaultQemuLine, type BuildOptions } from './qemu-build.js';
import { ensureGuest, findGuest, type GuestImage } from './guest.js';
import { chosenQemu } from '../qemu/discover.js';
import type { ResolvedConfig } from '../config/load.js';

export interface LabRuntime {
  binary: string;
  accel: Accel;
  dataDirs: string[];
  guest: GuestImage;
  /** Why this choice, for status output. */
  reason: string;
  /** What this call had to build (empty when everything was cached). */
  built: string[];
}

export interface RuntimeOptions extends BuildOptions {
  onProgress?: (msg: string) => void;
  /** Force TCG with the lab QEMU even where KVM works ($LOCKSTEP_ACCEL=tcg). */
  forceTcg?: boolean;
}

/** How long a first build takes here (2 cores), for the message before it starts. */
export const FIRST_BUILD_NOTE = "lockstep's QEMU is built once per machine and line from Debian's source: 6-9 minutes on 2 cores; later runs reuse it";

export async function labRuntime(opts: RuntimeOptions = {}): Promise<LabRuntime> {
  const say = opts.onProgress ?? (() => {});
  const line = opts.line ?? defaultQemuLine();
  const built: string[] = [];
  if (!findGuest()) {
    say('the demo guest is not built yet: building it from Debian packages (about 20 s, mostly the download)');
    built.push('demo guest');
  }
  const guest = await ensureGuest({ onProgress: opts.onProgress });
  if (!findLabQemu(line, opts.patches)) {
    say(`lockstep's QEMU ${line} is not built yet: ${FIRST_BUILD_NOTE}`);
    built.push(`QEMU ${line}`);
  }
  const lab = await ensureLabQemu({ ...opts, line });
  const forceTcg = opts.forceTcg ?? process.env.LOCKSTEP_ACCEL === 'tcg';
  if (forceTcg) return { binary: lab.binary, accel: 'tcg', dataDirs: lab.dataDirs, guest, reason: 'TCG forced', built };
  say('checking whether KVM works (boots a boot sector with KVM; cached after the first time)');
  const kvm = await probeKvm({ binary: lab.binary, dataDirs: lab.dataDirs });
  if (kvm.works) return { binary: lab.binary, accel: 'kvm', dataDirs: lab.dataDirs, guest, reason: `KVM works (${kvm.reason}): the lab QEMU with KVM`, built };
  say(`KVM not usable (${kvm.reason}): using the lab QEMU under TCG`);
  return { binary: lab.binary, accel: 'tcg', dataDirs: lab.dataDirs, guest, reason: `KVM not usable: ${kvm.reason}`, built };
}

/**
 * Before `lockstep up -c` of a config on this machine (the CLI may build;
 * `up` itself only finds): the demo guest when the VM boots it, and
 * lockstep's own QEMU when no other is chosen (qemu.binary, $LOCKSTEP_QEMU,
 * the installed package). Each is built once and then reused at once.
 */
export async function prepareForConfig(c: ResolvedConfig, o: { onStep?: (m: string) => void; onUpdate?: (m: string) => void } = {}): Promise<void> {
  if (c.vm.kernel === 'demo') {
    if (!findGuest()) o.onStep?.('the demo guest is not built yet: building it from Debian packages (about 20 s, mostly the download)');
    await ensureGuest({ onProgress: o.onStep });
  }
  if (!chosenQemu({ configured: c.qemu.binary })) {
    const line = defaultQemuLine();
    if (!findLabQemu(line)) o.onStep?.(`no QEMU chosen and lockstep's QEMU ${line} is not built yet: ${FIRST_BUILD_NOTE}`);
    await ensureLabQemu({ line, onStep: o.onStep, onUpdate: o.onUpdate });
  }
}
