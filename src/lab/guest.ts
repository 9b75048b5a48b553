/**
 * The demo guest: Debian's cloud kernel plus a busybox-static initramfs whose
 * /init starts an HTTP server with a disk-backed counter, a page that differs
 * on every call, and a TCP echo service (see guest-files/init).
 *
 * Built from Debian packages (apt-get download, dpkg -x), once per machine:
 * the result is cached under <cache>/guest/<recipe hash>/.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { run, which } from '../util/exec.js';
import { cacheDir, packageRoot } from '../util/paths.js';
import { LockstepError } from '../util/errors.js';
import { withDirLock, publishDir, removeStaleWork } from './cache.js';
import { GUEST_READY_MARKER, publishDemoGuest, type GuestImage } from '../qemu/builds.js';

export { GUEST_READY_MARKER, type GuestImage };

/** virtio modules in load order (the cloud kernel has them as modules). */
const MODULES: Array<[name: string, relPath: string]> = [
  ['virtio_ring', 'drivers/virtio/virtio_ring.ko'],
  ['virtio', 'drivers/virtio/virtio.ko'],
  ['virtio_pci_modern_dev', 'drivers/virtio/virtio_pci_modern_dev.ko'],
  ['virtio_pci_legacy_dev', 'drivers/virtio/virtio_pci_legacy_dev.ko'],
  ['virtio_pci', 'drivers/virtio/virtio_pci.ko'],
  ['failover', 'net/core/failover.ko'],
  ['net_failover', 'drivers/net/net_failover.ko'],
  ['virtio_net', 'drivers/net/virtio_net.ko'],
  ['virtio_blk', 'drivers/block/virtio_blk.ko'],
];

const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';

function guestFilesDir(): string {
  return path.join(packageRoot(), 'src', 'lab', 'guest-files');
}

function listFiles(dir: string, base = dir): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(p, base));
    else out.push(path.relative(base, p));
  }
  return out;
}

/** Hash of everything that decides the guest's content except Debian's package versions. */
export function guestRecipeHash(): string {
  const h = crypto.createHash('sha256');
  h.update('guest-recipe-v1\n');
  h.update(MODULES.map((m) => m.join('=')).join('\n'));
  const dir = guestFilesDir();
  for (const f of listFiles(dir)) {
    h.update(`\n${f}\n`);
    h.update(fs.readFileSync(path.join(dir, f)));
  }
  return h.digest('hex').slice(0, 16);
}

function readManifest(dir: string): GuestImage | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as GuestImage;
    if (fs.existsSync(m.kernel) && fs.existsSync(m.initrd)) return m;
  } catch {
    /* not built */
  }
  return undefined;
}

/** The cached guest if it is built, without building it. */
export function findGuest(): GuestImage | undefined {
  return readManifest(path.join(cacheDir(), 'guest', guestRecipeHash()));
}

export interface BuildGuestOptions {
  onProgress?: (msg: string) => void;
}

/** Returns the cached demo guest, building it first if needed (≈ 20 s, mostly the download). */
export async function ensureGuest(opts: BuildGuestOptions = {}): Promise<GuestImage> {
  const root = path.join(cacheDir(), 'guest');
  const key = guestRecipeHash();
  const dest = path.join(root, key);
  // Published for the daemons and `up` to find (qemu/builds.ts): they never build it.
  const published = (g: GuestImage): GuestImage => {
    publishDemoGuest(g);
    return g;
  };
  const cached = readManifest(dest);
  if (cached) return published(cached);
  fs.mkdirSync(root, { recursive: true });
  return withDirLock(path.join(root, `${key}.lock`), 'the demo guest build', async () => {
    const again = readManifest(dest);
    if (again) return published(again);
    const progress = opts.onProgress ?? (() => {});
    removeStaleWork(root, `${key}.tmp-`);
    const work = fs.mkdtempSync(path.join(root, `${key}.tmp-`));
    const log = path.join(root, `${key}.build.log`);
    fs.writeFileSync(log, `demo guest build ${new Date().toISOString()}\n`);
    try {
      for (const tool of ['apt-get', 'apt-cache', 'dpkg', 'cpio', 'gzip']) {
        if (!which(tool)) throw new LockstepError(`${tool} is needed to build the demo guest`, { hint: 'run the set-up: npm run demo (or scripts/setup.sh)' });
      }
      progress('resolving the Debian cloud kernel package');
      const show = await run('apt-cache', ['show', '--no-all-versions', KERNEL_META_PACKAGE], {
        logFile: log,
        what: `apt-cache show ${KERNEL_META_PACKAGE}`,
        hint: 'run apt-get update first (scripts/setup.sh does)',
      });
      const dep = /^Depends:.*?(linux-image-[^\s,(]+)/m.exec(show.stdout)?.[1];
      if (!dep) throw new LockstepError(`cannot find the kernel package ${KERNEL_META_PACKAGE} depends on`, { hint: `see ${log}` });
      const dl = path.join(work, 'debs');
      fs.mkdirSync(dl);
      progress(`downloading ${dep} and busybox-static`);
      await run('apt-get', ['download', dep, 'busybox-static'], { cwd: dl, logFile: log, what: 'downloading the guest packages', timeoutMs: 600_000 });
      const ex = path.join(work, 'x');
      fs.mkdirSync(ex);
      for (const deb of fs.readdirSync(dl)) {
        await run('dpkg', ['-x', path.join(dl, deb), ex], { logFile: log, what: `unpacking ${deb}` });
      }
      const bootDir = path.join(ex, 'boot');
      const vmlinuz = fs.readdirSync(bootDir).find((f) => f.startsWith('vmlinuz-'));
      if (!vmlinuz) throw new LockstepError(`no kernel in ${dep}`, { hint: `see ${log}` });
      const kernelVersion = vmlinuz.slice('vmlinuz-'.length);
      const modRoot = path.join(ex, 'lib', 'modules', kernelVersion, 'kernel');

      progress(`assembling the initramfs (kernel ${kernelVersion})`);
      const rootfs = path.join(work, 'rootfs');
      for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'etc', 'lib/modules', 'www/cgi-bin']) fs.mkdirSync(path.join(rootfs, d), { recursive: true });
      fs.copyFileSync(path.join(ex, 'bin', 'busybox'), path.join(rootfs, 'bin', 'busybox'));
      fs.chmodSync(path.join(rootfs, 'bin', 'busybox'), 0o755);
      for (const [name, rel] of MODULES) {
        const src = path.join(modRoot, rel);
        const out = path.join(rootfs, 'lib', 'modules', `${name}.ko`);
        if (fs.existsSync(src)) fs.copyFileSync(src, out);
        else if (fs.existsSync(`${src}.xz`)) {
          const r = await run('xz', ['-dc', `${src}.xz`], { what: `decompressing ${rel}.xz` });
          fs.writeFileSync(out, r.stdout, 'latin1');
        } else {
          // Built in, in some kernels: nothing to load.
          fs.appendFileSync(log, `module ${rel} not present (built in?)\n`);
        }
      }
      const files = guestFilesDir();
      for (const f of listFiles(files)) {
        const target = f === 'counter.sh' ? path.join(rootfs, 'etc', 'counter.sh') : path.join(rootfs, f);
        fs.mkdirSync(path.dirname(target), { recursive: true });
        fs.copyFileSync(path.join(files, f), target);
        fs.chmodSync(target, fs.statSync(path.join(files, f)).mode & 0o777);
      }
      const out = path.join(work, 'out');
      fs.mkdirSync(out);
      await run('sh', ['-c', `find . | sort | cpio --quiet -o -H newc -R 0:0 | gzip -9 > '${path.join(out, 'initrd.img')}'`], {
        cwd: rootfs,
        logFile: log,
        what: 'packing the initramfs',
      });
      fs.copyFileSync(path.join(bootDir, vmlinuz), path.join(out, 'vmlinuz'));
      const image: GuestImage = {
        kernel: path.join(dest, 'vmlinuz'),
        initrd: path.join(dest, 'initrd.img'),
        kernelVersion,
        readyMarker: GUEST_READY_MARKER,
      };
      fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(image, null, 2) + '\n');
      publishDir(out, dest);
      progress(`demo guest ready: ${dest}`);
      return published(image);
    } catch (err) {
      throw err instanceof LockstepError ? err : new LockstepError(`building the demo guest failed: ${(err as Error).message}`, { cause: err, hint: `see ${log}` });
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
}
