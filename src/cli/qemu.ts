import type { Command } from 'commander';
import { chosenQemu, locateQemu, probeQemu, PACKAGE_PREFIX, type QemuSource } from '../qemu/discover.js';
import { fixesOf, FIXES } from '../qemu/fixes.js';
import { findLabQemu, qemuLineOption, QEMU_LINES } from '../lab/qemu-build.js';
import { buildQemuPackage } from '../lab/qemu-package.js';
import { createProgress } from '../util/progress.js';
import { print } from './output.js';

const FROM: Record<QemuSource, string> = {
  config: 'the config',
  env: '$LOCKSTEP_QEMU',
  package: 'the installed lockstep-qemu package',
  lab: "lockstep's own build",
  path: 'PATH: not one lockstep runs unless named',
  explicit: '--binary',
};

export function registerQemuCommands(program: Command): void {
  const qemu = program.command('qemu').description('the QEMU lockstep would use, and what it can do');
  qemu
    .command('info')
    .description(
      'find the QEMU lockstep would run (--binary, else $LOCKSTEP_QEMU, else the installed lockstep-qemu package, else ' +
        "lockstep's own build if built, else PATH's) and probe its version and COLO abilities over QMP, and list the fixes " +
        'COLO needs that it has and lacks (lockstep refuses to run COLO on a QEMU that lacks one it needs, unless qemu.allowMissingFixes)',
    )
    .option('--binary <path>', 'probe this binary')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { binary?: string; json?: boolean }) => {
      const lab = opts.binary ? undefined : findLabQemu();
      const loc = chosenQemu({ configured: opts.binary }) ?? (lab ? { binary: lab.binary, source: 'lab' as const } : locateQemu());
      const info = await probeQemu(loc.binary, opts.binary ? 'explicit' : loc.source);
      const f = info.features;
      const yes = (b: boolean) => (b ? 'yes' : 'NO');
      const fixes = fixesOf(info);
      const under = (id: string) => ({ tcg: 'needed under TCG', any: 'needed under KVM and TCG', none: 'not needed, faster with it' } as const)[FIXES.find((x) => x.id === id)!.neededUnder];
      print(opts.json, { ...info, fixes }, () =>
        [
          `${info.binary} (from ${FROM[info.source]})`,
          `  version      ${info.version.major}.${info.version.minor}.${info.version.micro} ${info.package}`,
          `  COLO         ${yes(f.colo)}   proxy ${yes(f.coloProxy)}   replication ${yes(f.replication)}   quorum ${yes(f.quorum)}`,
          `  yank         ${yes(f.yank)}   reconnect-ms ${yes(f.reconnectMs)}`,
          `  accelerators ${f.accelerators.join(', ') || '(none)'} (compiled in; whether KVM works is decided by booting: lockstep lab prepare)`,
          '  fixes COLO needs:',
          ...fixes.map((x) => `    ${x.id} ${x.present ? 'yes' : 'NO '}  ${x.title} (${under(x.id)}${x.how === 'release' ? '; known by its release' : ''})`),
        ].join('\n'),
      );
    });

  qemu
    .command('package')
    .description(
      "build lockstep's QEMU as a Debian package for real hosts: lockstep-qemu-LINE, with KVM and TCG and every fix COLO needs, " +
        `installing under ${PACKAGE_PREFIX}/qemu-LINE beside the distribution's QEMU (never replacing it), where lockstep finds it. ` +
        'Builds the QEMU first if it is not cached (6-9 minutes). Install it with: apt install ./FILE.deb',
    )
    .option('--qemu <line>', `the QEMU line: ${QEMU_LINES.join(' or ')} (default: $LOCKSTEP_LAB_QEMU, else 7.2)`)
    .option('--out <dir>', 'where to write the .deb', '.')
    .option('--force', 'replace a .deb of the same name in --out')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { qemu?: string; out: string; force?: boolean; json?: boolean }) => {
      const line = qemuLineOption(opts.qemu);
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      const p = await buildQemuPackage({ line, outDir: opts.out, force: opts.force, onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      progress.done();
      print(opts.json, p, () =>
        [
          `${p.file}`,
          `  ${p.name} ${p.version} (${(p.sizeBytes / 1e6).toFixed(1)} MB), fixes ${p.fixes.join(', ')}`,
          `  install on a host:   apt install ./${p.file.split('/').pop()}   (or dpkg -i, then apt-get -f install)`,
          `  it installs:         ${p.binary}`,
          '  lockstep uses it without configuration; check with: lockstep qemu info',
        ].join('\n'),
      );
    });
}
