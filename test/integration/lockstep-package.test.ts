/**
 * `lockstep package`: lockstep itself as a .deb for real servers. Its
 * contents (the program with production dependencies only, /usr/bin/lockstep,
 * the manual page, the unit), then on a fresh Debian 13 (debootstrap's
 * minimal root, unpacked anew; Debian 13's nodejs is the 20 it needs): apt
 * installs it with its dependencies, `lockstep --version` and `lockstep host
 * init` work there, the daemon's unit is installed but not enabled, a newer
 * build upgrades it keeping the host's identity, and a purge removes the
 * program but never the host's identity nor the VMs' data.
 */
import { test, before, after } from 'node:test';
import { DASHBOARD_FILES } from '../../src/daemon/dashboard.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { lockstep, json } from '../helpers/cli.js';
import { run } from '../../src/util/exec.js';
import { freshDebianRoot, type DebianRoot } from '../../src/lab/debian-root.js';
import type { LockstepPackage } from '../../src/lab/lockstep-package.js';

const isRoot = process.getuid?.() === 0;
let dir: string;
let first: LockstepPackage;
let newer: LockstepPackage;
let root: DebianRoot | undefined;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-deb-'));
  const build = async (extra: string[]) => {
    const r = await lockstep(['package', '--out', dir, '--json', ...extra], { timeoutMs: 600_000 });
    assert.equal(r.code, 0, r.stderr);
    return json<LockstepPackage>(r);
  };
  first = await build([]);
  newer = await build(['--deb-version', `${first.version}+1`]);
});

after(() => {
  root?.remove();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the .deb holds the program with its production dependencies only, the command, the manual page and the unit', async () => {
  const field = async (name: string) => (await run('dpkg-deb', ['-f', first.file, name], { timeoutMs: 10_000 })).stdout.trim();
  assert.equal(await field('Package'), 'lockstep');
  assert.equal(await field('Architecture'), 'all');
  assert.match(await field('Depends'), /^nodejs \(>= 20\), openssl, qemu-utils, iproute2$/);
  assert.match(path.basename(first.file), /^lockstep_[0-9][A-Za-z0-9.+~]*_all\.deb$/);
  const own = ['/usr/share/lockstep/', '/usr/share/doc/lockstep/', '/usr/bin/lockstep', '/usr/share/man/man1/lockstep.1.gz', '/usr/lib/systemd/system/lockstepd.service'];
  assert.deepEqual(first.files.filter((f) => !own.some((o) => f === o || f.startsWith(o))), [], 'nothing outside its own places');
  const dashboard = DASHBOARD_FILES.map((f) => `/usr/share/lockstep/src/daemon/dashboard/${f}`);
  for (const f of ['/usr/bin/lockstep', '/usr/share/lockstep/dist/src/cli/main.js', '/usr/share/lockstep/node_modules/zod/package.json', '/usr/share/lockstep/node_modules/prom-client/package.json', '/usr/share/lockstep/patches/qemu-7.2/series', '/usr/share/lockstep/packaging/lockstep-alerts.yml', ...dashboard]) {
    assert.ok(first.files.includes(f), `${f} in the package`);
  }
  for (const dev of ['/usr/share/lockstep/node_modules/typescript/', '/usr/share/lockstep/node_modules/@types/', '/usr/share/lockstep/node_modules/playwright-core/', '/usr/share/lockstep/dist/test/', '/usr/share/lockstep/dist/bench/']) {
    assert.ok(!first.files.some((f) => f.startsWith(dev)), `no ${dev}: production only`);
  }
  // The manual page renders without a warning, and names every command.
  const x = path.join(dir, 'x');
  await run('dpkg-deb', ['-x', first.file, x], { timeoutMs: 60_000 });
  const man = spawnSync('man', ['--warnings', '-l', path.join(x, 'usr/share/man/man1/lockstep.1.gz')], { encoding: 'utf8', env: { ...process.env, MANWIDTH: '100', LC_ALL: 'C.UTF-8' } });
  if (man.error === undefined) {
    assert.equal(man.status, 0, man.stderr);
    assert.equal(man.stderr.trim(), '', 'no roff warnings');
    for (const c of ['lockstep up', 'lockstep host init', 'lockstep daemon', 'lockstep package', 'lockstep lab up', 'EXIT STATUS']) assert.ok(man.stdout.includes(c), `the manual has ${c}`);
  }
  const unit = fs.readFileSync(path.join(x, 'usr/lib/systemd/system/lockstepd.service'), 'utf8');
  assert.match(unit, /^ExecStart=\/usr\/bin\/lockstep daemon /m);
  assert.match(unit, /^KillMode=process$/m, 'a restart on upgrade leaves the VMs running');
});

test('a second build of the same version is refused without --force', async () => {
  const r = await lockstep(['package', '--out', dir, '--deb-version', first.version]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /exists[\s\S]*--force/);
});

test('on a fresh Debian 13: apt installs it, lockstep runs, host init works, the unit is disabled; an upgrade keeps the host; a purge keeps what the operator made', { skip: !isRoot && 'needs root (debootstrap, chroot)', timeout: 20 * 60_000 }, async () => {
  const r = await freshDebianRoot(dir, (m) => process.stderr.write(`# ${m}\n`), 'trixie');
  root = r;
  const inRoot = (cmd: string[], timeoutMs = 300_000) => r.run(cmd, { timeoutMs, allowFailure: true });
  for (const p of [first, newer]) fs.copyFileSync(p.file, path.join(r.dir, 'tmp', path.basename(p.file)));
  assert.notEqual((await inRoot(['sh', '-c', 'command -v node'])).code, 0, 'a fresh system: no Node.js');

  const install = await inRoot(['sh', '-c', `apt-get update -qq && apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 /tmp/${path.basename(first.file)}`], 900_000);
  assert.equal(install.code, 0, install.stdout + install.stderr);
  assert.equal((await inRoot(['dpkg-query', '-W', '-f=${Status} ${Version}', 'lockstep'])).stdout, `install ok installed ${first.version}`);
  assert.match((await inRoot(['dpkg-query', '-W', '-f=${Version}', 'nodejs'])).stdout, /^2\d\./, "Debian 13's nodejs 20");
  assert.match(install.stdout + install.stderr, /lockstep host init/, 'the first install says what to do next');

  const version = await inRoot(['lockstep', '--version']);
  assert.equal(version.code, 0, version.stderr);
  assert.equal(version.stdout.trim(), first.version);
  const init = await inRoot(['lockstep', 'host', 'init', '--name', 'a', '--replication', '10.9.0.1', '--api', '10.9.0.1']);
  assert.equal(init.code, 0, init.stderr);
  const mode = (p: string) => fs.statSync(path.join(r.dir, p)).mode & 0o777;
  assert.equal(mode('etc/lockstep'), 0o755);
  assert.equal(mode('var/lib/lockstep'), 0o700, "the VMs' state: root only");
  assert.equal(mode('etc/lockstep/tls/host.key'), 0o600);
  const show = await inRoot(['lockstep', 'host', 'show', '--help']);
  assert.equal(show.code, 0, show.stderr);
  assert.ok(fs.existsSync(path.join(r.dir, 'usr/lib/systemd/system/lockstepd.service')), 'the unit is installed');
  assert.ok(!fs.existsSync(path.join(r.dir, 'etc/systemd/system/multi-user.target.wants/lockstepd.service')), '... and not enabled: the operator enables it after host init');

  // A newer build over it: the host's identity and files untouched.
  const hostFile = fs.readFileSync(path.join(r.dir, 'etc/lockstep/host.yaml'), 'utf8');
  const key = fs.readFileSync(path.join(r.dir, 'etc/lockstep/tls/host.key'), 'utf8');
  fs.writeFileSync(path.join(r.dir, 'var/lib/lockstep/a-vm-disk.qcow2'), 'the data of a VM');
  const upgrade = await inRoot(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', '-o', 'Dpkg::Use-Pty=0', `/tmp/${path.basename(newer.file)}`], 600_000);
  assert.equal(upgrade.code, 0, upgrade.stderr);
  assert.equal((await inRoot(['lockstep', '--version'])).stdout.trim(), newer.version);
  assert.equal(fs.readFileSync(path.join(r.dir, 'etc/lockstep/host.yaml'), 'utf8'), hostFile);
  assert.equal(fs.readFileSync(path.join(r.dir, 'etc/lockstep/tls/host.key'), 'utf8'), key);
  assert.doesNotMatch(upgrade.stdout, /lockstep host init/, 'an upgrade does not repeat the first steps');

  // Purged: the program goes; the operator's host identity and the VMs' data stay.
  const purge = await inRoot(['dpkg', '--purge', 'lockstep']);
  assert.equal(purge.code, 0, purge.stderr);
  assert.match(purge.stdout + purge.stderr, /\/var\/lib\/lockstep is kept/);
  for (const gone of ['usr/bin/lockstep', 'usr/share/lockstep', 'usr/lib/systemd/system/lockstepd.service', 'usr/share/man/man1/lockstep.1.gz']) assert.ok(!fs.existsSync(path.join(r.dir, gone)), `${gone} removed`);
  assert.equal(fs.readFileSync(path.join(r.dir, 'etc/lockstep/host.yaml'), 'utf8'), hostFile, "the host's identity is kept");
  assert.equal(fs.readFileSync(path.join(r.dir, 'var/lib/lockstep/a-vm-disk.qcow2'), 'utf8'), 'the data of a VM', "a VM's data is never deleted by a purge");
  assert.equal((await inRoot(['dpkg-query', '-W', '-f=${Status}', 'lockstep'])).stdout.includes('not-installed') || (await inRoot(['dpkg-query', '-W', 'lockstep'])).code !== 0, true);
});
