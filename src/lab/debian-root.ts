/**
 * A fresh Debian machine for the package tests: a minimal root of Debian 12
 * (bookworm: lockstep's QEMU packages) or 13 (trixie: lockstep's own package,
 * which needs Debian 13's nodejs 20) made by debootstrap (--variant=minbase)
 * from the system's Debian mirror,
 * cached as a tarball once per machine and unpacked anew for every use, so
 * each test starts from a system nothing was installed on. Commands run in
 * it through `unshare --mount` and chroot, with /proc and /dev mounted in a
 * private mount namespace that ends with the command: nothing outside the
 * root is touched, and nothing is left mounted.
 */
import fs from 'node:fs';
import path from 'node:path';
import { run, which, type RunOptions, type RunResult } from '../util/exec.js';
import { cacheDir } from '../util/paths.js';
import { LockstepError } from '../util/errors.js';
import { withDirLock } from './cache.js';
import { debianMirror, DEBIAN_KEYRING } from './qemu-build.js';

export type DebianSuite = 'bookworm' | 'trixie';
const RELEASE: Record<DebianSuite, string> = { bookworm: 'Debian 12', trixie: 'Debian 13' };
/** Changes when the recipe does: a new tarball is made. */
const RECIPE = 'minbase-v1';

/** The cached tarball of a fresh root of `suite`, made (once) if missing. */
export async function ensureDebianRootTarball(onStep: (m: string) => void = () => {}, suite: DebianSuite = 'bookworm'): Promise<string> {
  const SUITE = suite;
  const dir = path.join(cacheDir(), 'debian-root');
  const tarball = path.join(dir, `${SUITE}-${RECIPE}.tar`);
  if (fs.existsSync(tarball)) return tarball;
  fs.mkdirSync(dir, { recursive: true });
  return withDirLock(path.join(dir, `${SUITE}.lock`), `making a ${RELEASE[suite]} root`, async () => {
    if (fs.existsSync(tarball)) return tarball;
    if (!which('debootstrap')) throw new LockstepError('debootstrap is not installed', { hint: 'apt-get install debootstrap (scripts/setup.sh does this)' });
    const work = path.join(dir, `work-${SUITE}`);
    fs.rmSync(work, { recursive: true, force: true });
    const log = path.join(dir, 'debootstrap.log');
    try {
      onStep(`debootstrap --variant=minbase ${SUITE} (once per machine)`);
      await run('debootstrap', ['--variant=minbase', `--keyring=${DEBIAN_KEYRING}`, SUITE, work, debianMirror()], {
        logFile: log,
        timeoutMs: 900_000,
        what: 'debootstrap',
        hint: `the log is ${log}`,
      });
      // The system's apt settings for its mirror (e.g. a snapshot mirror's Check-Valid-Until), as a host using it would have.
      for (const f of fs.existsSync('/etc/apt/apt.conf.d') ? fs.readdirSync('/etc/apt/apt.conf.d') : []) {
        const text = fs.readFileSync(path.join('/etc/apt/apt.conf.d', f), 'utf8');
        if (/Check-Valid-Until|Check-Date|Proxy/i.test(text)) fs.writeFileSync(path.join(work, 'etc/apt/apt.conf.d', f), text);
      }
      fs.rmSync(path.join(work, 'var/cache/apt/archives'), { recursive: true, force: true });
      fs.mkdirSync(path.join(work, 'var/cache/apt/archives/partial'), { recursive: true });
      const tmp = `${tarball}.tmp`;
      await run('tar', ['--numeric-owner', '-C', work, '-cf', tmp, '.'], { timeoutMs: 300_000, what: 'tar (the Debian root)' });
      fs.renameSync(tmp, tarball);
      return tarball;
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
}

export interface DebianRoot {
  dir: string;
  /**
   * Runs `cmd` in the root (chroot, with /proc and /dev), in a private mount namespace; `binds` are host paths mounted
   * at the same path inside (e.g. node and lockstep itself, to run lockstep there).
   */
  run(cmd: string[], o?: RunOptions & { binds?: string[] }): Promise<RunResult>;
  remove(): void;
}

/** A fresh Debian root (12 unless told) in a new directory under `parent`. */
export async function freshDebianRoot(parent: string, onStep?: (m: string) => void, suite: DebianSuite = 'bookworm'): Promise<DebianRoot> {
  const tarball = await ensureDebianRootTarball(onStep, suite);
  const dir = fs.mkdtempSync(path.join(parent, suite === 'bookworm' ? 'debian12-' : 'debian13-'));
  await run('tar', ['--numeric-owner', '-C', dir, '-xpf', tarball], { timeoutMs: 300_000, what: 'unpacking the Debian root' });
  fs.copyFileSync('/etc/resolv.conf', path.join(dir, 'etc/resolv.conf'));
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return {
    dir,
    run(cmd, o = {}) {
      const mounts = [`mount -t proc proc ${q(path.join(dir, 'proc'))}`, `mount --rbind /dev ${q(path.join(dir, 'dev'))}`];
      for (const b of o.binds ?? []) {
        const inside = path.join(dir, b);
        if (fs.statSync(b).isDirectory()) fs.mkdirSync(inside, { recursive: true });
        else if (!fs.existsSync(inside)) {
          fs.mkdirSync(path.dirname(inside), { recursive: true });
          fs.writeFileSync(inside, '');
        }
        mounts.push(`mount --bind ${q(b)} ${q(inside)}`);
      }
      const script = `set -e; ${mounts.join('; ')}; exec chroot ${q(dir)} "$@"`;
      const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', LANG: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive', ...o.env };
      return run('unshare', ['--mount', '--propagation', 'private', '--fork', '--', 'sh', '-c', script, 'sh', ...cmd], { ...o, env });
    },
    remove() {
      // Mounts live in each command's own namespace; should one ever show here, the root is left rather than a bound
      // directory (lockstep's own tree, /dev) emptied through it.
      const mounted = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && (m === dir || m.startsWith(dir + '/')));
      if (mounted.length) throw new LockstepError(`not removing ${dir}: ${mounted[0]} is mounted`, { hint: `umount it, then remove ${dir}` });
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
