import type { Command } from 'commander';
import { locateQemu, probeQemu } from '../qemu/discover.js';
import { fixesOf, FIXES } from '../qemu/fixes.js';
import { print } from './output.js';

export function registerQemuCommands(program: Command): void {
  const qemu = program.command('qemu').description('the QEMU lockstep would use, and what it can do');
  qemu
    .command('info')
    .description(
      'find QEMU (--binary, else $LOCKSTEP_QEMU, else PATH) and probe its version and COLO abilities over QMP, and list the fixes ' +
        'COLO needs that it has and lacks (lockstep refuses to run COLO on a QEMU that lacks one it needs, unless qemu.allowMissingFixes)',
    )
    .option('--binary <path>', 'probe this binary')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { binary?: string; json?: boolean }) => {
      const loc = locateQemu({ configured: opts.binary });
      const info = await probeQemu(loc.binary, opts.binary ? 'explicit' : loc.source);
      const f = info.features;
      const yes = (b: boolean) => (b ? 'yes' : 'NO');
      const fixes = fixesOf(info);
      const under = (id: string) => (FIXES.find((x) => x.id === id)!.neededUnder === 'tcg' ? 'needed under TCG' : 'needed under KVM and TCG');
      print(opts.json, { ...info, fixes }, () =>
        [
          `${info.binary} (from ${info.source})`,
          `  version      ${info.version.major}.${info.version.minor}.${info.version.micro} ${info.package}`,
          `  COLO         ${yes(f.colo)}   proxy ${yes(f.coloProxy)}   replication ${yes(f.replication)}   quorum ${yes(f.quorum)}`,
          `  yank         ${yes(f.yank)}   reconnect-ms ${yes(f.reconnectMs)}`,
          `  accelerators ${f.accelerators.join(', ') || '(none)'} (compiled in; whether KVM works is decided by booting: lockstep lab prepare)`,
          '  fixes COLO needs:',
          ...fixes.map((x) => `    ${x.id} ${x.present ? 'yes' : 'NO '}  ${x.title} (${under(x.id)}${x.how === 'release' ? '; known by its release' : ''})`),
        ].join('\n'),
      );
    });
}
