/**
 * A private file system view per lab host. Each host gets a mount namespace
 * of its own, pinned by a file (util-linux `unshare --mount=FILE`), in which
 * its own directories are bound on /etc/lockstep, /var/lib/lockstep and
 * /run/lockstep, /dev/shm is a RAM disk of its own, and the lab's directory
 * of hosts is covered by an empty tmpfs: a host sees its own files where a
 * real host has them, and nothing of the other hosts' (nor of another lab's). Commands run in a host with `enter(netns)`, which
 * joins the mount namespace and then the host's network namespace.
 */
import fs from 'node:fs';
import path from 'node:path';
import { run } from '../util/exec.js';
import { LockstepError } from '../util/errors.js';

/** Where the namespace files live: a private mount of its own (a namespace cannot be pinned on a shared mount). */
const NS_DIR = '/run/lockstep-lab/mnt';

/** The directories a real host has, and what each lab host binds there. */
export const HOST_DIRS = { etc: '/etc/lockstep', state: '/var/lib/lockstep', run: '/run/lockstep' } as const;

export interface HostFs {
  name: string;
  /** The file pinning the mount namespace. */
  file: string;
  /** The host's directories as seen from outside (the lab's process, the tests). */
  dirs: { etc: string; state: string; run: string };
  /** The command prefix that runs `cmd` in this host: its mount namespace, then network namespace `netns`. */
  enter(netns: string): string[];
  remove(): Promise<void>;
}

async function sh(cmd: string, args: string[]): Promise<void> {
  await run(cmd, args, { timeoutMs: 10_000, what: `${cmd} ${args.join(' ')}` });
}

async function isMountpoint(dir: string): Promise<boolean> {
  const r = await run('mountpoint', ['-q', dir], { allowFailure: true, timeoutMs: 5000 });
  return r.code === 0;
}

/** Host `name`'s directories under `root`, seen from outside. */
function hostDirs(root: string, name: string): HostFs['dirs'] {
  const base = path.join(root, name);
  return { etc: path.join(base, 'etc'), state: path.join(base, 'state'), run: path.join(base, 'run') };
}

async function removeNs(file: string): Promise<void> {
  await run('umount', ['-l', file], { allowFailure: true, timeoutMs: 10_000 });
  fs.rmSync(file, { force: true });
}

async function privateNsDir(): Promise<void> {
  fs.mkdirSync(NS_DIR, { recursive: true, mode: 0o700 });
  if (await isMountpoint(NS_DIR)) return;
  await sh('mount', ['--bind', NS_DIR, NS_DIR]);
  await sh('mount', ['--make-private', NS_DIR]);
}

/**
 * Creates the file system view of host `name` (unique to this lab) with its
 * directories under `root/name/`, hiding `root` itself inside.
 */
export async function createHostFs(o: { name: string; root: string }): Promise<HostFs> {
  if (process.getuid?.() !== 0) throw new LockstepError('the lab hosts\' mount namespaces need root', { hint: 'run as root' });
  await privateNsDir();
  const dirs = hostDirs(o.root, o.name);
  fs.mkdirSync(dirs.etc, { recursive: true, mode: 0o755 });
  fs.mkdirSync(dirs.state, { recursive: true, mode: 0o700 });
  fs.mkdirSync(dirs.run, { recursive: true, mode: 0o700 });
  // The mount points, empty, where a real host has the directories (only inside a host is anything mounted on them).
  for (const d of Object.values(HOST_DIRS)) fs.mkdirSync(d, { recursive: true, mode: 0o755 });
  const file = path.join(NS_DIR, o.name);
  fs.writeFileSync(file, '');
  const remove = () => removeNs(file);
  try {
    await sh('unshare', [`--mount=${file}`, '--propagation', 'private', 'mount', '--bind', dirs.etc, HOST_DIRS.etc]);
    const inside = (cmd: string, args: string[]) => sh('nsenter', [`--mount=${file}`, '--', cmd, ...args]);
    await inside('mount', ['--bind', dirs.state, HOST_DIRS.state]);
    await inside('mount', ['--bind', dirs.run, HOST_DIRS.run]);
    // A RAM disk of its own, as a real host has: a secondary's buffers go there (runtimeBase), named after the VM and
    // the node only, so two labs on this machine with a VM web on a host a would fight over one file (seen: a lab left
    // running by the demo made another lab's resync fail with qemu-img's "Failed to get write lock" until it ended).
    await inside('mount', ['-t', 'tmpfs', '-o', 'mode=1777', 'lockstep-lab-shm', '/dev/shm']);
    // Last: the lab's hosts directory (the source of the binds above) is covered by an empty one.
    await inside('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'lockstep-lab-hidden', o.root]);
  } catch (err) {
    await remove();
    throw err;
  }
  return hostFsOf(o.name, file, dirs, remove);
}

function hostFsOf(name: string, file: string, dirs: HostFs['dirs'], remove: () => Promise<void>): HostFs {
  return { name, file, dirs, enter: (netns) => ['nsenter', `--mount=${file}`, '--', 'ip', 'netns', 'exec', netns], remove };
}

/** The file system view of host `name` that createHostFs made earlier (possibly in another process); undefined when it is gone. */
export async function openHostFs(o: { name: string; root: string }): Promise<HostFs | undefined> {
  const file = path.join(NS_DIR, o.name);
  if (!fs.existsSync(file) || !(await isMountpoint(file))) return undefined;
  const dirs = hostDirs(o.root, o.name);
  return hostFsOf(o.name, file, dirs, () => removeNs(file));
}
