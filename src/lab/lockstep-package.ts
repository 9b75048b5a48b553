/**
 * lockstep itself as a Debian package for real servers (`lockstep package`):
 * lockstep_VERSION_all.deb, architecture-independent (JavaScript, and no
 * dependency with native code). It holds the compiled program with its
 * production dependencies only (npm ci --omit=dev, from the committed lock
 * file) under /usr/share/lockstep, the command /usr/bin/lockstep, its manual
 * page, and the daemon's systemd unit, installed but not enabled: a daemon
 * needs its host file first (lockstep host init), so the operator enables it
 * (systemctl enable --now lockstepd). It depends on Debian's nodejs >= 20
 * (Debian 13's; on Debian 12 a nodejs 20 from elsewhere, e.g. NodeSource's,
 * satisfies it), openssl, qemu-utils and iproute2, and recommends
 * lockstep's QEMU.
 *
 * Maintainer scripts, as Debian's policy has them: configure makes
 * /etc/lockstep (0755) and /var/lib/lockstep (0700) if missing; an upgrade
 * restarts a running daemon (its unit's KillMode=process leaves the VMs
 * running, and the new daemon attaches to them again); remove stops the
 * daemon (the VMs run on); purge removes what the package made and leaves
 * what the operator made: the host identity in /etc/lockstep and every VM's
 * state and disks in /var/lib/lockstep are never deleted by a purge.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { run } from '../util/exec.js';
import { LockstepError } from '../util/errors.js';
import { lockstepVersion, packageRoot } from '../util/paths.js';

export const LOCKSTEP_PACKAGE = 'lockstep';
/** Where the package puts the program (its package.json, dist/, node_modules/, patches/...). */
export const INSTALL_DIR = '/usr/share/lockstep';
/** The Node.js the code needs (package.json's engines; commander and @hono/node-server need 20 too). */
export const NODE_DEPENDS = 'nodejs (>= 20)';
/**
 * What the package needs: Node.js; openssl (host init signs the host's certificate with it); qemu-utils (qemu-img
 * makes every disk and buffer); iproute2 (taps and bridges). lockstep's QEMU is recommended: a host file may name
 * another.
 */
export const DEPENDS = [NODE_DEPENDS, 'openssl', 'qemu-utils', 'iproute2'].join(', ');
export const UNIT_FILE = '/usr/lib/systemd/system/lockstepd.service';

export interface LockstepPackage {
  file: string;
  name: string;
  version: string;
  depends: string;
  sizeBytes: number;
  /** Every path it installs (files and links), for the record. */
  files: string[];
}

export interface LockstepPackageOptions {
  outDir: string;
  /** The Debian version; default: package.json's version, plus +gitDATE.SHA in a git checkout. */
  version?: string;
  /** The manual page (roff), made by the CLI from its own commands. */
  manPage: string;
  force?: boolean;
  onStep?: (msg: string) => void;
}

/** Package.json's version, plus the commit's date and hash when built from a git checkout (so each build is newer). */
export async function defaultPackageVersion(): Promise<string> {
  const base = lockstepVersion();
  const git = await run('git', ['-C', packageRoot(), 'log', '-1', '--format=%cd.%h', '--date=format:%Y%m%d%H%M%S'], { allowFailure: true, timeoutMs: 10_000 });
  const stamp = git.code === 0 ? git.stdout.trim() : '';
  return stamp ? `${base}+git${stamp}` : base;
}

/** A Debian version: digits first, then what policy allows (no epoch or revision here: a native package). */
export function checkDebianVersion(v: string): void {
  if (!/^[0-9][A-Za-z0-9.+~]*$/.test(v)) throw new LockstepError(`"${v}" is not a version this package can have`, { hint: 'digits first, then letters, digits, ".", "+" or "~"' });
}

export function controlFile(p: { version: string; installedSizeKiB: number; depends: string }): string {
  return [
    `Package: ${LOCKSTEP_PACKAGE}`,
    `Version: ${p.version}`,
    'Architecture: all',
    'Maintainer: lockstep <lockstep@localhost>',
    `Installed-Size: ${p.installedSizeKiB}`,
    `Depends: ${p.depends}`,
    'Recommends: lockstep-qemu-10.0 | lockstep-qemu-7.2',
    'Section: admin',
    'Priority: optional',
    'Homepage: https://localhost/lockstep',
    'Description: non-stop virtual machines on QEMU COLO',
    ' lockstep runs every protected VM twice, on two hosts, in COLO',
    ' (coarse-grained lock-stepping) mode: the network output of the two is',
    ' compared, a checkpoint syncs the secondary when they differ, and the',
    ' survivor carries the VM on when a host dies, with no acknowledged write',
    ' lost. This package holds the lockstep command, its daemon lockstepd',
    ' (a systemd unit, installed disabled) and its manual page.',
    '',
  ].join('\n');
}

/** Maintainer scripts (POSIX sh), keyed by name. */
export function maintainerScripts(): Record<'postinst' | 'prerm' | 'postrm', string> {
  const systemd = '[ -d /run/systemd/system ]';
  return {
    postinst: [
      '#!/bin/sh',
      'set -e',
      'if [ "$1" = configure ]; then',
      // The operator's directories: made if missing, never replaced (host init writes into them).
      '  [ -d /etc/lockstep ] || install -d -m 0755 /etc/lockstep',
      '  [ -d /var/lib/lockstep ] || install -d -m 0700 /var/lib/lockstep',
      `  if ${systemd}; then`,
      '    systemctl daemon-reload >/dev/null || true',
      // An upgrade: a running daemon gets the new code (its VMs run on: KillMode=process).
      '    if [ -n "$2" ]; then systemctl try-restart lockstepd.service >/dev/null || true; fi',
      '  fi',
      '  if [ -z "$2" ]; then',
      '    echo "lockstep: set this host up with: lockstep host init --name NAME --replication ADDRESS (see man lockstep),"',
      '    echo "          then start its daemon with: systemctl enable --now lockstepd"',
      '  fi',
      'fi',
      'exit 0',
      '',
    ].join('\n'),
    prerm: [
      '#!/bin/sh',
      'set -e',
      // Removed (not upgraded): the daemon stops; the VMs it ran keep running (KillMode=process) until stopped by hand.
      `if [ "$1" = remove ] && ${systemd}; then`,
      '  systemctl stop lockstepd.service >/dev/null 2>&1 || true',
      'fi',
      'exit 0',
      '',
    ].join('\n'),
    postrm: [
      '#!/bin/sh',
      'set -e',
      `if ${systemd}; then systemctl daemon-reload >/dev/null 2>&1 || true; fi`,
      'if [ "$1" = purge ]; then',
      '  rm -rf /run/lockstep',
      // What the operator made stays: the host identity and the VMs' state and disks. Only empty directories go.
      '  for d in /var/lib/lockstep /etc/lockstep; do',
      '    if [ -d "$d" ]; then',
      '      rmdir "$d" 2>/dev/null || echo "lockstep: $d is kept (it holds this host\'s identity or its VMs\' data); remove it yourself if you want it gone"',
      '    fi',
      '  done',
      'fi',
      'exit 0',
      '',
    ].join('\n'),
  };
}

/** The daemon's unit as the package installs it: the repository's, whose command is the package's /usr/bin/lockstep. */
export function packagedUnit(repoUnit: string): string {
  if (!/^ExecStart=\/usr\/bin\/lockstep daemon /m.test(repoUnit)) throw new LockstepError('packaging/lockstepd.service does not run /usr/bin/lockstep daemon, the command the package installs');
  return repoUnit;
}

function dirSizeKiB(dir: string): number {
  let bytes = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) bytes += fs.statSync(path.join(e.parentPath, e.name)).size;
  }
  return Math.ceil(bytes / 1024);
}

function copyTree(from: string, to: string, keep: (rel: string) => boolean = () => true): void {
  for (const e of fs.readdirSync(from, { withFileTypes: true, recursive: true })) {
    const src = path.join(e.parentPath, e.name);
    const rel = path.relative(from, src);
    if (!e.isFile() || !keep(rel)) continue;
    const dst = path.join(to, rel);
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    fs.copyFileSync(src, dst);
    fs.chmodSync(dst, fs.statSync(src).mode & 0o111 ? 0o755 : 0o644);
  }
}

/** Builds lockstep_VERSION_all.deb in `outDir` from this checkout (compiled: dist/ must be current). */
export async function buildLockstepPackage(o: LockstepPackageOptions): Promise<LockstepPackage> {
  const step = o.onStep ?? (() => {});
  const root = packageRoot();
  const version = o.version ?? (await defaultPackageVersion());
  checkDebianVersion(version);
  if (!fs.existsSync(path.join(root, 'dist', 'src', 'cli', 'main.js'))) throw new LockstepError(`${root} is not compiled (no dist/)`, { hint: 'npm run build (or scripts/setup.sh) first' });
  const file = path.join(path.resolve(o.outDir), `${LOCKSTEP_PACKAGE}_${version}_all.deb`);
  if (fs.existsSync(file) && !o.force) throw new LockstepError(`${file} exists`, { hint: 'remove it, pass --force to replace it, or choose another --out' });
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const work = fs.mkdtempSync(path.join(path.dirname(file), `.${LOCKSTEP_PACKAGE}-`));
  try {
    const stage = path.join(work, 'root');
    const app = path.join(stage, INSTALL_DIR);
    step(`staging ${LOCKSTEP_PACKAGE} ${version}`);
    // The program: its compiled code (no tests, benchmarks or source maps), and the files it reads at run time.
    copyTree(path.join(root, 'dist', 'src'), path.join(app, 'dist', 'src'), (rel) => rel.endsWith('.js'));
    copyTree(path.join(root, 'bin'), path.join(app, 'bin'));
    // (packaging/ carries the alerting rules for Prometheus; src/daemon/dashboard the dashboard's pages, served as they are.)
    for (const d of ['patches', 'examples', 'packaging', path.join('src', 'lab', 'guest-files'), path.join('src', 'daemon', 'dashboard')]) copyTree(path.join(root, d), path.join(app, d));
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ ...pkg, version, scripts: undefined, devDependencies: undefined }, null, 2) + '\n');
    fs.copyFileSync(path.join(root, 'package-lock.json'), path.join(app, 'package-lock.json'));
    step('production dependencies, exactly as locked (npm ci --omit=dev)');
    await run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: app, timeoutMs: 600_000, what: 'npm ci --omit=dev', hint: 'it needs the npm registry or npm\'s cache' });
    fs.rmSync(path.join(app, 'package-lock.json'));
    fs.rmSync(path.join(app, 'node_modules', '.package-lock.json'), { force: true });
    // The command, the unit (disabled), the manual page, the documentation.
    fs.mkdirSync(path.join(stage, 'usr', 'bin'), { recursive: true });
    fs.symlinkSync(path.join(INSTALL_DIR, 'bin', 'lockstep.js'), path.join(stage, 'usr', 'bin', 'lockstep'));
    fs.mkdirSync(path.join(stage, path.dirname(UNIT_FILE)), { recursive: true });
    fs.writeFileSync(path.join(stage, UNIT_FILE), packagedUnit(fs.readFileSync(path.join(root, 'packaging', 'lockstepd.service'), 'utf8')));
    const man = path.join(stage, 'usr', 'share', 'man', 'man1');
    fs.mkdirSync(man, { recursive: true });
    fs.writeFileSync(path.join(man, 'lockstep.1.gz'), zlib.gzipSync(o.manPage, { level: 9 }));
    const doc = path.join(stage, 'usr', 'share', 'doc', LOCKSTEP_PACKAGE);
    fs.mkdirSync(doc, { recursive: true });
    fs.copyFileSync(path.join(root, 'README.md'), path.join(doc, 'README.md'));
    fs.writeFileSync(
      path.join(doc, 'copyright'),
      'lockstep is free software, under the GNU General Public License version 2 or (at your option) any later version.\n' +
        'It bundles npm packages (in /usr/share/lockstep/node_modules), each under the license its package.json names.\n' +
        'On Debian systems, the GPL-2 is in /usr/share/common-licenses/GPL-2.\n',
    );
    fs.writeFileSync(
      path.join(doc, 'changelog.gz'),
      zlib.gzipSync(`lockstep (${version}) unstable; urgency=medium\n\n  * Built from lockstep's repository.\n\n -- lockstep <lockstep@localhost>  ${new Date().toUTCString().replace(/GMT$/, '+0000')}\n`, { level: 9 }),
    );
    for (const dir of [stage]) {
      for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) if (e.isDirectory()) fs.chmodSync(path.join(e.parentPath, e.name), 0o755);
    }
    const debian = path.join(stage, 'DEBIAN');
    fs.mkdirSync(debian);
    fs.writeFileSync(path.join(debian, 'control'), controlFile({ version, installedSizeKiB: dirSizeKiB(stage), depends: DEPENDS }));
    for (const [name, text] of Object.entries(maintainerScripts())) fs.writeFileSync(path.join(debian, name), text, { mode: 0o755 });
    step(`writing ${path.basename(file)}`);
    const tmp = path.join(work, 'out.deb');
    await run('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', stage, tmp], { timeoutMs: 600_000, what: 'dpkg-deb --build' });
    const listing = await run('dpkg-deb', ['--contents', tmp], { timeoutMs: 60_000, what: 'dpkg-deb --contents' });
    const files = listing.stdout
      .split('\n')
      .map((l) => /\s\.(\/\S*?)(?: -> \S+)?$/.exec(l)?.[1])
      .filter((p): p is string => p !== undefined && !p.endsWith('/'));
    fs.renameSync(tmp, file);
    return { file, name: LOCKSTEP_PACKAGE, version, depends: DEPENDS, sizeBytes: fs.statSync(file).size, files };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
