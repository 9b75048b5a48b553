/**
 * `lockstep qemu package`: lockstep's QEMU as a .deb for real hosts. On a
 * fresh Debian 12 (debootstrap's minimal root, unpacked anew), `dpkg -i` then
 * `apt-get -f install` installs it; `lockstep qemu info` there finds it with
 * no configuration and lists its fixes; it boots the demo guest with no -L
 * (its firmware found through the package's links to Debian's); the
 * distribution's QEMU installs beside it and stays /usr/bin's; removing the
 * package leaves the distribution's QEMU working.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { lockstep, json } from '../helpers/cli.js';
import { runtime } from '../helpers/lab.js';
import { run } from '../../src/util/exec.js';
import { packageRoot } from '../../src/util/paths.js';
import { defaultQemuLine } from '../../src/lab/qemu-build.js';
import { freshDebianRoot, type DebianRoot } from '../../src/lab/debian-root.js';
import type { QemuPackage } from '../../src/lab/qemu-package.js';

const line = defaultQemuLine();
const installed = `/usr/lib/lockstep/qemu-${line}/bin/qemu-system-x86_64`;
let dir: string;
let deb: QemuPackage;
let root: DebianRoot | undefined;
const qemuPids: number[] = [];

before(async () => {
  await runtime(); // the line's lab build and the demo guest, built (or reused) outside the tests' timeouts
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-package-'));
  const r = await lockstep(['qemu', 'package', '--qemu', line, '--out', dir, '--json'], { timeoutMs: 900_000 });
  assert.equal(r.code, 0, r.stderr);
  deb = json<QemuPackage>(r);
});

after(() => {
  for (const pid of qemuPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* ended */
    }
  }
  root?.remove();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function field(name: string): Promise<string> {
  return (await run('dpkg-deb', ['-f', deb.file, name], { timeoutMs: 10_000 })).stdout.trim();
}

test(`the .deb of QEMU ${line} installs only under /usr/lib/lockstep/qemu-${line} and its doc directory, and replaces nothing`, async () => {
  assert.equal(await field('Package'), `lockstep-qemu-${line}`);
  for (const f of ['Conflicts', 'Replaces', 'Provides', 'Breaks']) assert.equal(await field(f), '', `${f} must be empty: the distribution's QEMU stays`);
  const depends = (await field('Depends')).split(',').map((s) => s.trim().split(' ')[0]);
  for (const d of ['libglib2.0-0', 'libpixman-1-0', 'libgnutls30', 'seabios', 'ipxe-qemu', 'qemu-system-data']) assert.ok(depends.includes(d), `Depends names ${d}: ${depends.join(', ')}`);
  assert.ok(!depends.some((d) => d === 'qemu-system-x86'), 'it does not need the distribution\'s QEMU');
  const files = (await run('dpkg-deb', ['-c', deb.file], { timeoutMs: 10_000 })).stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(/\s+/)[5]!);
  const own = [`./usr/lib/lockstep/qemu-${line}/`, `./usr/share/doc/lockstep-qemu-${line}/`];
  const outside = files.filter((f) => !own.some((o) => f.startsWith(o)) && !own.some((o) => o.startsWith(f)));
  assert.deepEqual(outside, [], 'every file is under the package\'s own directories');
  assert.ok(files.includes(`.${installed}`));
  assert.ok(files.some((f) => f.startsWith(`./usr/share/doc/lockstep-qemu-${line}/patches/0003-`)), 'the patches ship with it');
  assert.deepEqual(deb.fixes, line === '7.2' ? ['P1', 'P2', 'P3', 'P4', 'P5'] : ['P1', 'P2', 'P3', 'P5']);
});

test('a second run refuses to overwrite the .deb without --force', async () => {
  const before = fs.statSync(deb.file).mtimeMs;
  const r = await lockstep(['qemu', 'package', '--qemu', line, '--out', dir]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /exists/);
  assert.match(r.stderr, /--force/);
  assert.equal(fs.statSync(deb.file).mtimeMs, before);
});

test(`on a fresh Debian 12: dpkg -i installs it, lockstep qemu info finds it and lists its fixes, it boots a guest, and the distribution's QEMU installs beside it`, async () => {
  const r = await freshDebianRoot(dir, (m) => process.stderr.write(`# ${m}\n`));
  root = r;
  const inRoot = (cmd: string[], timeoutMs = 300_000) => r.run(cmd, { timeoutMs, allowFailure: true });
  fs.copyFileSync(deb.file, path.join(r.dir, 'tmp', path.basename(deb.file)));
  assert.equal((await inRoot(['dpkg-query', '-W', '-f=${Status}', 'qemu-system-x86'])).stdout, '', 'a fresh system: no QEMU');

  // dpkg -i unpacks it; on a minimal system its libraries and firmware are not there yet, which apt-get -f install fetches.
  const dpkg = await inRoot(['dpkg', '-i', `/tmp/${path.basename(deb.file)}`]);
  assert.ok(dpkg.code === 0 || /dependency problems/.test(dpkg.stderr), `dpkg -i: ${dpkg.stderr}`);
  const fix = await inRoot(['sh', '-c', 'apt-get update -qq && apt-get -f install -y -qq -o Dpkg::Use-Pty=0'], 600_000);
  assert.equal(fix.code, 0, fix.stderr);
  assert.equal((await inRoot(['dpkg-query', '-W', '-f=${Status}', `lockstep-qemu-${line}`])).stdout, 'install ok installed');

  // lockstep itself in that system (node and lockstep's tree bound in), with an empty cache: no build of its own to find.
  const binds = [process.execPath, packageRoot()];
  const info = async () => {
    const q = await r.run([process.execPath, path.join(packageRoot(), 'bin', 'lockstep.js'), 'qemu', 'info', '--json'], {
      timeoutMs: 120_000,
      allowFailure: true,
      binds,
      env: { LOCKSTEP_CACHE: '/tmp/lockstep-cache' },
    });
    assert.equal(q.code, 0, q.stderr);
    return JSON.parse(q.stdout) as { binary: string; source: string; version: { major: number; minor: number }; package: string; features: { colo: boolean; accelerators: string[] }; fixes: Array<{ id: string; present: boolean }> };
  };
  const i = await info();
  assert.equal(i.source, 'package');
  assert.equal(i.binary, installed);
  assert.equal(`${i.version.major}.${i.version.minor}`, line);
  assert.ok(i.features.colo);
  for (const a of ['kvm', 'tcg']) assert.ok(i.features.accelerators.includes(a), `${a} compiled in: one QEMU for KVM and TCG hosts`);
  for (const f of i.fixes) assert.ok(f.present, `${f.id} present`);

  // The demo guest boots with it, without -L: BIOS, linuxboot and the NIC's ROM come through the package's links.
  const g = (await runtime()).guest;
  fs.copyFileSync(g.kernel, path.join(r.dir, 'tmp', 'vmlinuz'));
  fs.copyFileSync(g.initrd, path.join(r.dir, 'tmp', 'initrd'));
  const boot = await inRoot([
    installed, '-accel', 'tcg', '-m', '128', '-nodefaults', '-display', 'none', '-serial', 'file:/tmp/serial.log',
    '-kernel', '/tmp/vmlinuz', '-initrd', '/tmp/initrd', '-append', 'console=ttyS0 quiet',
    '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0', '-daemonize', '-pidfile', '/tmp/qemu.pid',
  ], 60_000);
  assert.equal(boot.code, 0, boot.stderr);
  const pid = Number(fs.readFileSync(path.join(r.dir, 'tmp', 'qemu.pid'), 'utf8').trim());
  qemuPids.push(pid);
  const serial = path.join(r.dir, 'tmp', 'serial.log');
  const deadline = Date.now() + 120_000;
  while (!(fs.existsSync(serial) && fs.readFileSync(serial, 'utf8').includes(g.readyMarker))) {
    assert.ok(Date.now() < deadline, `the guest did not boot within 120 s: ${fs.existsSync(serial) ? fs.readFileSync(serial, 'utf8').slice(-500) : 'no console output'}`);
    await sleep(250);
  }
  process.kill(pid, 'SIGKILL');

  // The distribution's QEMU beside it: /usr/bin's stays Debian's, and lockstep still chooses its own.
  const distro = await inRoot(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', '-o', 'Dpkg::Use-Pty=0', 'qemu-system-x86'], 600_000);
  assert.equal(distro.code, 0, distro.stderr);
  assert.match((await inRoot(['dpkg', '-S', '/usr/bin/qemu-system-x86_64'])).stdout, /^qemu-system-x86:/);
  assert.match((await inRoot(['dpkg', '-S', installed])).stdout, new RegExp(`^lockstep-qemu-${line.replace('.', '\\.')}:`));
  const again = await info();
  assert.equal(again.source, 'package');
  assert.equal(again.binary, installed);

  // Removing it leaves the distribution's QEMU as it was.
  const rm = await inRoot(['dpkg', '--purge', `lockstep-qemu-${line}`]);
  assert.equal(rm.code, 0, rm.stderr);
  assert.ok(!fs.existsSync(path.join(r.dir, installed)));
  const v = await inRoot(['/usr/bin/qemu-system-x86_64', '-version']);
  assert.equal(v.code, 0, v.stderr);
  assert.match(v.stdout, /Debian/);
  const after = await info();
  assert.equal(after.source, 'path', 'with the package gone, only PATH\'s is left (and up would refuse it for its missing fixes)');
});
