/** lockstep package: lockstep itself as a Debian package, for real servers (src/lab/lockstep-package.ts). */
import type { Command } from 'commander';
import { buildLockstepPackage, defaultPackageVersion, DEPENDS, INSTALL_DIR, UNIT_FILE } from '../lab/lockstep-package.js';
import { createProgress } from '../util/progress.js';
import { manPage } from './manpage.js';
import { print } from './output.js';

export function registerPackageCommand(program: Command): void {
  program
    .command('package')
    .description(
      `build lockstep itself as a Debian package for real servers: lockstep_VERSION_all.deb, the program under ${INSTALL_DIR} ` +
        `with its production dependencies only, /usr/bin/lockstep, its manual page (man lockstep), and the daemon's unit ` +
        `${UNIT_FILE}, installed disabled (enable it after lockstep host init). Depends on ${DEPENDS}. ` +
        "Install it on each host with: apt install ./lockstep_VERSION_all.deb (and lockstep's QEMU: lockstep qemu package). " +
        'Purging it keeps the host identity (/etc/lockstep) and the VMs\' data (/var/lib/lockstep).',
    )
    .option('--out <dir>', 'where to write the .deb', '.')
    .option('--deb-version <version>', "the package's version (default: package.json's, plus +gitDATE.COMMIT in a git checkout)")
    .option('--force', 'replace a .deb of the same name in --out')
    .option('--json', 'print the result as JSON')
    .action(async (opts: { out: string; debVersion?: string; force?: boolean; json?: boolean }) => {
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      const version = opts.debVersion ?? (await defaultPackageVersion());
      const p = await buildLockstepPackage({ outDir: opts.out, version, force: opts.force, manPage: manPage(program, { version, date: new Date() }), onStep: (m) => progress.step(m) });
      progress.done();
      print(opts.json, p, () =>
        [
          p.file,
          `  ${p.name} ${p.version} (${(p.sizeBytes / 1e6).toFixed(1)} MB, ${p.files.length} files), depends on ${p.depends}`,
          `  install on a host:  apt install ./${p.file.split('/').pop()}`,
          '  then:               lockstep host init --name NAME --replication ADDRESS; systemctl enable --now lockstepd',
        ].join('\n'),
      );
    });
}
