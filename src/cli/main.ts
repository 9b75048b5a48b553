import { Command } from 'commander';
import { describeError } from '../util/errors.js';
import { registerLabCommands } from './lab.js';
import { registerQemuCommands } from './qemu.js';
import { registerDemoCommand } from './demo.js';
import { registerPairCommands } from './pair.js';
import { registerNodeCommands } from './node.js';
import { registerHostCommands } from './host.js';
import { registerPackageCommand } from './package.js';
import { registerObserveCommands } from './observe.js';
import { lockstepVersion } from '../util/paths.js';

const program = new Command();
program
  .name('lockstep')
  .description(
    'Non-stop virtual machines on QEMU COLO: a primary and a secondary VM run in lock-step, ' +
      'their network output is compared, and the survivor carries on when a node dies.\n\n' +
      'Start with:\n' +
      '  one host:     lockstep up -c examples/one-host.yaml  (then status -c, down -c)\n' +
      '  two servers:  lockstep host init, host trust, lockstepd on both,\n' +
      '                then lockstep up -f examples/two-hosts.yaml (then status, down)\n' +
      '  the lab:      as root, lockstep demo, or lockstep lab up\n' +
      '                (then lab status, lab power-off primary, lab down)',
  )
  .version(lockstepVersion(), '-V, --version', "print lockstep's version")
  .showHelpAfterError('(run with --help for usage)')
  .configureHelp({ sortSubcommands: true });

registerLabCommands(program);
registerQemuCommands(program);
registerDemoCommand(program);
registerPairCommands(program);
registerNodeCommands(program);
registerHostCommands(program);
registerObserveCommands(program);
// Last: its manual page describes every command registered before it.
registerPackageCommand(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`lockstep: ${describeError(err)}\n`);
  process.exitCode = 1;
});
