import type { Command } from 'commander';
import { ensureLabQemu, patchSeries, qemuLineOption, QEMU_LINES } from '../lab/qemu-build.js';
import { ensureGuest } from '../lab/guest.js';
import { labRuntime } from '../lab/runtime.js';
import { createProgress } from '../util/progress.js';
import { print } from './output.js';
import { registerLabHostsCommands } from './lab-hosts.js';

export function registerLabCommands(program: Command): void {
  const lab = program
    .command('lab')
    .description("the lab: separate hosts (network and mount namespaces) with lockstep's daemons, a protected VM and chaos actions; a patched QEMU for hosts without KVM; the demo guest");
  registerLabHostsCommands(lab);

  lab
    .command('build-qemu')
    .description(
      "build (or reuse) the lab QEMU: Debian's QEMU source of one line (7.2: bookworm's, 10.0: trixie's) plus lockstep's COLO patches for it, cached per line and patch set",
    )
    .option('--qemu <line>', `the QEMU line: ${QEMU_LINES.join(' or ')} (default: $LOCKSTEP_LAB_QEMU, else 7.2)`)
    .option('--patches <list>', 'comma-separated subset of the patch series (default: all); "none" for an unpatched build')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { qemu?: string; patches?: string; json?: boolean }) => {
      const line = qemuLineOption(opts.qemu);
      const patches = opts.patches === undefined ? patchSeries(line) : opts.patches === 'none' ? [] : opts.patches.split(',').filter(Boolean);
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      const q = await ensureLabQemu({ line, patches, onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      progress.done();
      print(opts.json, q, () => `lab QEMU ${q.sourceVersion} + [${q.patches.join(', ')}]\n  ${q.binary}`);
    });

  lab
    .command('prepare')
    .description(
      'get this machine ready to run lab VMs: build (or reuse) the demo guest, find out whether KVM works by booting it, ' +
        'and where it does not, build (or reuse) the patched lab QEMU. Everything is cached; later runs take a second.',
    )
    .option('--tcg', 'use the lab QEMU under TCG even where KVM works')
    .option('--qemu <line>', `the QEMU line: ${QEMU_LINES.join(' or ')} (default: $LOCKSTEP_LAB_QEMU, else 7.2)`)
    .option('--test-builds', 'where TCG is used, also build the partial patch sets the tests use to show that each patch is needed')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { tcg?: boolean; qemu?: string; testBuilds?: boolean; json?: boolean }) => {
      const line = qemuLineOption(opts.qemu);
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      const rt = await labRuntime({
        line,
        forceTcg: opts.tcg,
        onProgress: (m) => progress.step(m),
        onStep: (m) => progress.step(m),
        onUpdate: (m) => progress.update(m),
      });
      if (opts.testBuilds && rt.accel === 'tcg') {
        const series = patchSeries(line);
        // The sets the patch tests compare against: P1 alone (P2's test, 7.2), P1-P2 (P3's), P1-P3 (P5's).
        for (const n of line === '7.2' ? [1, 2, 3] : [2, 3]) {
          await ensureLabQemu({ line, patches: series.slice(0, n), onStep: (m) => progress.step(`[${line}, patches ${series.slice(0, n).map((p) => p.slice(0, 4)).join(', ')} only] ${m}`), onUpdate: (m) => progress.update(m) });
        }
        // The P1 test's stock QEMU where the distribution's is not of this line (Debian 12 has 7.2).
        if (line !== '7.2') await ensureLabQemu({ line, patches: [], onStep: (m) => progress.step(`[${line}, no patches] ${m}`), onUpdate: (m) => progress.update(m) });
      }
      progress.done();
      print(opts.json, rt, () => `lab ready: ${rt.accel.toUpperCase()} with ${rt.binary}\n  why: ${rt.reason}\n  guest kernel ${rt.guest.kernelVersion}`);
    });

  lab
    .command('build-guest')
    .description('build (or reuse) the demo guest: Debian cloud kernel + busybox initramfs with HTTP counter and echo services')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { json?: boolean }) => {
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      const g = await ensureGuest({ onProgress: (m) => progress.step(m) });
      progress.done();
      print(opts.json, g, () => `demo guest (kernel ${g.kernelVersion})\n  kernel ${g.kernel}\n  initrd ${g.initrd}`);
    });
}
