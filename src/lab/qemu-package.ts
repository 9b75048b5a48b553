/**
 * lockstep's QEMU as a Debian package for real hosts (`lockstep qemu
 * package`): the lab build of one line (Debian's QEMU source plus lockstep's
 * patches, KVM and TCG; qemu-build.ts) as lockstep-qemu-LINE, installed under
 * /usr/lib/lockstep/qemu-LINE beside the distribution's QEMU. It provides,
 * conflicts with and replaces nothing: the distribution's qemu-system-x86
 * stays what /usr/bin/qemu-system-x86_64 is.
 *
 * The binary finds its firmware without -L: QEMU's builds are relocatable
 * (the data directory is looked up relative to the executable), and the
 * package's share/qemu holds links to the firmware of Debian's seabios,
 * ipxe-qemu and qemu-system-data (data packages only), on which it depends,
 * as Debian's own QEMU does. The library dependencies are dpkg-shlibdeps'
 * answer for the binary, so the package installs on the Debian release it was
 * built on (a Debian 12 build on Debian 12). The applied patches are shipped
 * in its documentation directory, with the source version they apply to.
 */
import fs from 'node:fs';
import path from 'node:path';
import { run } from '../util/exec.js';
import { LockstepError } from '../util/errors.js';
import { DEFAULT_BINARY, packageDir, packageName } from '../qemu/discover.js';
import { fixIdsOfPatches } from '../qemu/fixes.js';
import { ensureLabQemu, FIRMWARE_DIRS, patchesDir, patchSeries, type QemuLine } from './qemu-build.js';

/** Debian's firmware and data packages the binary loads files of at run time (no emulator among them). */
export const FIRMWARE_PACKAGES = ['seabios', 'ipxe-qemu', 'qemu-system-data'];

export interface QemuPackage {
  /** The .deb written. */
  file: string;
  name: string;
  version: string;
  architecture: string;
  line: QemuLine;
  /** lockstep's fixes the binary carries (P1, ...). */
  fixes: string[];
  /** Where it installs the binary. */
  binary: string;
  depends: string;
  sizeBytes: number;
}

export interface PackageOptions {
  line: QemuLine;
  /** The directory to write the .deb into. */
  outDir: string;
  /** Replace a .deb of the same name there. */
  force?: boolean;
  onStep?: (msg: string) => void;
  onUpdate?: (msg: string) => void;
}

/** The Depends of the package: the binary's libraries (as dpkg-shlibdeps says), then the firmware packages. */
export function dependsField(shlibs: string): string {
  const libs = shlibs
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return [...libs, ...FIRMWARE_PACKAGES].join(', ');
}

/** The package's control file. */
export function controlFile(p: { name: string; version: string; architecture: string; depends: string; installedSizeKiB: number; line: string; sourceVersion: string; fixes: string[] }): string {
  const fixes = p.fixes.length ? p.fixes.join(', ') : 'none';
  return [
    `Package: ${p.name}`,
    `Version: ${p.version}`,
    `Architecture: ${p.architecture}`,
    'Maintainer: lockstep <lockstep@localhost>',
    `Installed-Size: ${p.installedSizeKiB}`,
    `Depends: ${p.depends}`,
    'Recommends: qemu-utils',
    'Section: misc',
    'Priority: optional',
    `Description: QEMU ${p.line} with lockstep's COLO fixes (${fixes})`,
    ` qemu-system-x86_64 built from Debian's qemu ${p.sourceVersion} source with`,
    " lockstep's patches for COLO fault tolerance, with KVM and TCG. It installs",
    ` under ${packageDir(p.line)} beside the distribution's QEMU and never`,
    ' replaces it; lockstep finds it there. The patches are in',
    ` /usr/share/doc/${p.name}/patches.`,
    '',
  ].join('\n');
}

function dirSizeKiB(dir: string): number {
  let bytes = 0;
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else bytes += e.isSymbolicLink() ? 0 : fs.statSync(p).size;
    }
  };
  walk(dir);
  return Math.ceil(bytes / 1024);
}

/** Builds (or reuses) the line's full lab build and wraps it as a .deb in `outDir`. */
export async function buildQemuPackage(o: PackageOptions): Promise<QemuPackage> {
  const step = o.onStep ?? (() => {});
  const missingFirmware = FIRMWARE_DIRS.filter((d) => !fs.existsSync(d));
  if (missingFirmware.length) {
    throw new LockstepError(`cannot package QEMU: ${missingFirmware.join(', ')} missing`, {
      hint: `apt-get install ${FIRMWARE_PACKAGES.join(' ')} (the package links to their firmware)`,
    });
  }
  const patches = patchSeries(o.line);
  const lab = await ensureLabQemu({ line: o.line, patches, onStep: o.onStep, onUpdate: o.onUpdate });
  const name = packageName(o.line);
  const architecture = (await run('dpkg', ['--print-architecture'], { timeoutMs: 10_000, what: 'dpkg --print-architecture' })).stdout.trim();
  // Debian's version of the source, then which of lockstep's builds (the build key: line, patch set, recipe).
  const version = `1:${lab.sourceVersion}+lockstep.${lab.key}`;
  const file = path.join(path.resolve(o.outDir), `${name}_${version.replace(/^\d+:/, '')}_${architecture}.deb`);
  if (fs.existsSync(file) && !o.force) {
    throw new LockstepError(`${file} exists`, { hint: 'remove it, pass --force to replace it, or choose another --out' });
  }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const work = fs.mkdtempSync(path.join(path.dirname(file), `.${name}-`));
  try {
    step(`staging ${name} ${version}`);
    const root = path.join(work, 'root');
    const dir = path.join(root, packageDir(o.line));
    fs.mkdirSync(path.join(dir, 'bin'), { recursive: true });
    const bin = path.join(dir, 'bin', DEFAULT_BINARY);
    fs.copyFileSync(lab.binary, bin);
    fs.chmodSync(bin, 0o755);
    // As Debian ships binaries: without symbols (18.8 MB → 15 MB for 7.2's).
    await run('strip', ['--strip-unneeded', '--remove-section=.comment', '--remove-section=.note', bin], { timeoutMs: 120_000, what: 'strip', hint: 'apt-get install binutils' });
    // Relocatable: the binary looks for its data in ../share/qemu. Links to Debian's firmware, the first of a name wins (as with -L).
    const data = path.join(dir, 'share', 'qemu');
    fs.mkdirSync(data, { recursive: true });
    for (const d of FIRMWARE_DIRS) {
      for (const f of fs.readdirSync(d).sort()) {
        const link = path.join(data, f);
        if (!fs.existsSync(link)) fs.symlinkSync(path.join(d, f), link);
      }
    }
    const doc = path.join(root, 'usr', 'share', 'doc', name);
    fs.mkdirSync(path.join(doc, 'patches'), { recursive: true });
    for (const p of patches) fs.copyFileSync(path.join(patchesDir(o.line), p), path.join(doc, 'patches', p));
    const fixes = fixIdsOfPatches(patches);
    fs.writeFileSync(
      path.join(doc, 'README'),
      [
        `${name}: QEMU ${o.line} for lockstep`,
        '',
        `qemu-system-x86_64 built from Debian's qemu ${lab.sourceVersion} source package,`,
        `with lockstep's patches (in patches/, applied in order): ${patches.join(', ')}.`,
        `They carry lockstep's fixes ${fixes.join(', ')} (lockstep qemu info lists what each does).`,
        '',
        `Installed in ${packageDir(o.line)}; the distribution's QEMU is left as it is.`,
        `lockstep uses it without configuration; a host file can name it: qemu.binary: ${path.join(packageDir(o.line), 'bin', DEFAULT_BINARY)}`,
        '',
      ].join('\n'),
    );
    fs.writeFileSync(
      path.join(doc, 'copyright'),
      [
        'QEMU is free software: see the copyright file of Debian\'s qemu-system-x86 package for its authors and licenses',
        '(GPL-2, with parts under other free licenses). lockstep\'s patches are under GPL-2 or later, as QEMU.',
        'On Debian systems, the GPL-2 is in /usr/share/common-licenses/GPL-2.',
        '',
      ].join('\n'),
    );
    step('finding its library dependencies (dpkg-shlibdeps)');
    // dpkg-shlibdeps reads the package's name from a debian/control in its working directory.
    const shl = path.join(work, 'shlibdeps');
    fs.mkdirSync(path.join(shl, 'debian'), { recursive: true });
    fs.writeFileSync(path.join(shl, 'debian', 'control'), `Source: ${name}\n\nPackage: ${name}\nArchitecture: ${architecture}\n`);
    const shlibs = await run('dpkg-shlibdeps', ['-O', `-e${bin}`], { cwd: shl, timeoutMs: 120_000, what: 'dpkg-shlibdeps', hint: 'apt-get install dpkg-dev' });
    const m = /^shlibs:Depends=(.*)$/m.exec(shlibs.stdout);
    if (!m) throw new LockstepError(`dpkg-shlibdeps gave no dependencies for ${bin}: ${shlibs.stdout.trim()}`);
    const depends = dependsField(m[1]!);
    fs.mkdirSync(path.join(root, 'DEBIAN'));
    fs.writeFileSync(
      path.join(root, 'DEBIAN', 'control'),
      controlFile({ name, version, architecture, depends, installedSizeKiB: dirSizeKiB(root), line: o.line, sourceVersion: lab.sourceVersion, fixes }),
    );
    step(`writing ${path.basename(file)}`);
    const tmp = path.join(work, 'out.deb');
    await run('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', root, tmp], { timeoutMs: 600_000, what: 'dpkg-deb --build' });
    fs.renameSync(tmp, file);
    return { file, name, version, architecture, line: o.line, fixes, binary: path.join(packageDir(o.line), 'bin', DEFAULT_BINARY), depends, sizeBytes: fs.statSync(file).size };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
