/**
 * The lab QEMU: Debian's own QEMU 7.2 source package plus lockstep's patch set
 * (patches/qemu-7.2), built for x86_64 only, for hosts where KVM does not work
 * and COLO must run under TCG. Stock 7.2 cannot: see the patches' headers.
 *
 * The source comes from `apt-get source` through a private deb-src list made
 * from the system's own deb entries; the system's apt configuration is never
 * touched. Builds land in <cache>/qemu/<key>/, key = hash of the patch set and
 * the build recipe, published atomically, so a machine builds each patch set
 * once and never sees a half-built binary.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { run, which } from '../util/exec.js';
import { cacheDir, packageRoot } from '../util/paths.js';
import { LockstepError } from '../util/errors.js';
import { withDirLock, publishDir, removeStaleWork } from './cache.js';

export interface LabQemu {
  /** The qemu-system-x86_64 binary. */
  binary: string;
  /** Firmware directories to pass with -L (the build ships no blobs). */
  dataDirs: string[];
  patches: string[];
  sourceVersion: string;
  key: string;
}

/** Debian packages the build needs (their binaries or headers). */
export const BUILD_DEPENDENCIES = [
  'dpkg-dev',
  'meson',
  'ninja-build',
  'pkg-config',
  'flex',
  'bison',
  'libglib2.0-dev',
  'libpixman-1-dev',
  'libslirp-dev',
  'libfdt-dev',
  'libzstd-dev',
  // TLS for the data plane (tls-creds-psk); meson enables GnuTLS when its headers are there.
  'libgnutls28-dev',
  'zlib1g-dev',
  'python3-venv',
  'bzip2',
  'xz-utils',
  'patch',
];

/** Firmware the lab binary loads at run time, from Debian's packages. */
export const FIRMWARE_DIRS = ['/usr/share/qemu', '/usr/share/seabios', '/usr/lib/ipxe/qemu'];

const CONFIGURE_FLAGS = [
  '--target-list=x86_64-softmmu',
  '--disable-docs',
  '--disable-werror',
  '--enable-slirp',
  '--disable-gtk',
  '--disable-sdl',
  '--disable-vnc',
  '--disable-opengl',
  '--disable-virglrenderer',
  '--disable-spice',
  '--disable-xen',
  '--disable-kvm',
  '--enable-tcg',
  '--disable-tools',
  '--disable-guest-agent',
  '--disable-debug-info',
  '--disable-install-blobs',
];

const SOURCE_PACKAGE = 'qemu';
/** Only Debian's 7.2 line is what the patches are written for. */
const SOURCE_VERSION_PREFIX = '1:7.2+dfsg';

export function patchesDir(): string {
  return path.join(packageRoot(), 'patches', 'qemu-7.2');
}

/** The whole patch set, in order (from the series file). */
export function patchSeries(): string[] {
  return fs
    .readFileSync(path.join(patchesDir(), 'series'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
}

export function buildKey(patches: string[]): string {
  const h = crypto.createHash('sha256');
  h.update(`lab-qemu-recipe-v1\n${SOURCE_PACKAGE} ${SOURCE_VERSION_PREFIX}\n${CONFIGURE_FLAGS.join(' ')}\n`);
  for (const p of patches) {
    h.update(`\n${p}\n`);
    h.update(fs.readFileSync(path.join(patchesDir(), p)));
  }
  return h.digest('hex').slice(0, 16);
}

function readManifest(dir: string): LabQemu | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as LabQemu;
    if (fs.existsSync(m.binary)) return m;
  } catch {
    /* not built */
  }
  return undefined;
}

/** The cached lab QEMU for this patch list, if built. */
export function findLabQemu(patches: string[] = patchSeries()): LabQemu | undefined {
  return readManifest(path.join(cacheDir(), 'qemu', buildKey(patches)));
}

export interface BuildOptions {
  /** A subset of the series, e.g. to reproduce a bug a later patch fixes. Default: all. */
  patches?: string[];
  onStep?: (msg: string) => void;
  onUpdate?: (msg: string) => void;
}

function deb822ToSource(text: string): string {
  return text.replace(/^Types:.*$/gm, 'Types: deb-src');
}

function oneLineToSource(text: string): string {
  return text
    .split('\n')
    .filter((l) => /^\s*deb\s/.test(l))
    .map((l) => l.replace(/^\s*deb\s/, 'deb-src '))
    .join('\n');
}

/**
 * Writes a private apt configuration whose only sources are deb-src twins of
 * the system's deb sources, and returns the apt-get options that select it.
 */
function privateAptSources(dir: string): string[] {
  const parts = path.join(dir, 'sources.list.d');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(parts, { recursive: true });
  fs.mkdirSync(path.join(dir, 'lists', 'partial'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'cache', 'archives', 'partial'), { recursive: true });
  let n = 0;
  const sys = '/etc/apt/sources.list.d';
  if (fs.existsSync(sys)) {
    for (const f of fs.readdirSync(sys)) {
      const text = fs.readFileSync(path.join(sys, f), 'utf8');
      if (f.endsWith('.sources') && /^Types:.*\bdeb\b/m.test(text)) {
        fs.writeFileSync(path.join(parts, `${n++}-${f}`), deb822ToSource(text));
      } else if (f.endsWith('.list') && oneLineToSource(text)) {
        fs.writeFileSync(path.join(parts, `${n++}-${f}`), oneLineToSource(text) + '\n');
      }
    }
  }
  const main = '/etc/apt/sources.list';
  let mainList = '/dev/null';
  if (fs.existsSync(main) && oneLineToSource(fs.readFileSync(main, 'utf8'))) {
    mainList = path.join(dir, 'sources.list');
    fs.writeFileSync(mainList, oneLineToSource(fs.readFileSync(main, 'utf8')) + '\n');
    n++;
  }
  if (n === 0) {
    throw new LockstepError('no Debian package sources are configured on this machine', {
      hint: 'the lab QEMU is built from Debian\'s qemu source package; configure apt sources (/etc/apt/sources.list.d) first',
    });
  }
  return [
    '-o', `Dir::Etc::SourceList=${mainList}`,
    '-o', `Dir::Etc::SourceParts=${parts}`,
    '-o', `Dir::State::Lists=${path.join(dir, 'lists')}`,
    '-o', `Dir::Cache=${path.join(dir, 'cache')}`,
    '-o', 'Debug::NoLocking=1',
    '-o', 'APT::Sandbox::User=root',
  ];
}

/**
 * Returns the lab QEMU for the patch set, building it first when it is not
 * cached (≈ 3-4 minutes on 2 cores). Progress goes to the callbacks, the
 * full output to <cache>/qemu/<key>.build.log.
 */
export async function ensureLabQemu(opts: BuildOptions = {}): Promise<LabQemu> {
  const patches = opts.patches ?? patchSeries();
  for (const p of patches) {
    if (!fs.existsSync(path.join(patchesDir(), p))) throw new LockstepError(`unknown patch ${p}`, { hint: `patches are in ${patchesDir()}` });
  }
  const key = buildKey(patches);
  const root = path.join(cacheDir(), 'qemu');
  const dest = path.join(root, key);
  const cached = readManifest(dest);
  if (cached) return cached;
  fs.mkdirSync(root, { recursive: true });
  return withDirLock(path.join(root, `${key}.lock`), 'building the lab QEMU', async () => {
    const again = readManifest(dest);
    if (again) return again;
    const step = opts.onStep ?? (() => {});
    const update = opts.onUpdate ?? (() => {});
    const log = path.join(root, `${key}.build.log`);
    fs.writeFileSync(log, `lab QEMU build ${new Date().toISOString()}\npatches: ${patches.join(' ') || '(none)'}\n`);
    removeStaleWork(root, `${key}.tmp-`);
    const work = fs.mkdtempSync(path.join(root, `${key}.tmp-`));
    const fail = (what: string, err: unknown): never => {
      throw new LockstepError(`building the lab QEMU failed while ${what}: ${(err as Error).message.split('\n')[0]}`, {
        cause: err,
        hint: `the full log is ${log}`,
      });
    };
    try {
      const missing = ['apt-get', 'dpkg-source', 'meson', 'ninja', 'cc', 'pkg-config', 'patch'].filter((t) => !which(t));
      if (missing.length) {
        throw new LockstepError(`cannot build the lab QEMU: ${missing.join(', ')} not installed`, {
          hint: `apt-get install ${BUILD_DEPENDENCIES.join(' ')} (scripts/setup.sh does this)`,
        });
      }
      step('fetching Debian\'s QEMU 7.2 source package');
      const aptOpts = privateAptSources(path.join(work, 'apt'));
      await run('apt-get', [...aptOpts, 'update'], { logFile: log, timeoutMs: 600_000, what: 'apt-get update (private deb-src list)' }).catch((e) => fail('fetching the source index', e));
      const policy = await run('apt-cache', [...aptOpts, 'showsrc', SOURCE_PACKAGE], { logFile: undefined, what: 'apt-cache showsrc qemu' }).catch((e) => fail('looking up the source package', e));
      const versions = [...policy.stdout.matchAll(/^Version:\s*(\S+)/gm)].map((m) => m[1]!).filter((v) => v.startsWith(SOURCE_VERSION_PREFIX));
      if (versions.length === 0) fail('looking up the source package', new Error(`no ${SOURCE_PACKAGE} ${SOURCE_VERSION_PREFIX}* in the configured sources`));
      // apt-cache lists the newest first per archive; let apt choose among them.
      const src = path.join(work, 'src');
      fs.mkdirSync(src);
      await run('apt-get', [...aptOpts, 'source', '--download-only', SOURCE_PACKAGE], { cwd: src, logFile: log, timeoutMs: 900_000, what: 'apt-get source qemu' }).catch((e) => fail('downloading the source package', e));
      const dsc = fs.readdirSync(src).find((f) => f.endsWith('.dsc'));
      if (!dsc) fail('downloading the source package', new Error('no .dsc downloaded'));
      const sourceVersion = /^qemu_(.*)\.dsc$/.exec(dsc!)?.[1] ?? 'unknown';
      if (!sourceVersion.startsWith(SOURCE_VERSION_PREFIX.slice(2))) {
        fail('checking the source version', new Error(`got qemu ${sourceVersion}; the patch set is for Debian's 7.2 (bookworm)`));
      }
      step(`unpacking qemu ${sourceVersion} with Debian's patches`);
      await run('dpkg-source', ['--no-check', '-x', dsc!, 'qemu'], { cwd: src, logFile: log, timeoutMs: 300_000, what: 'dpkg-source -x' }).catch((e) => fail('unpacking the source', e));
      const tree = path.join(src, 'qemu');
      for (const p of patches) {
        step(`applying ${p}`);
        await run('patch', ['-p1', '--forward', '--batch', '-i', path.join(patchesDir(), p)], { cwd: tree, logFile: log, what: `patch ${p}` }).catch((e) => fail(`applying ${p}`, e));
      }
      step('configuring (x86_64-softmmu only)');
      const build = path.join(work, 'build');
      fs.mkdirSync(build);
      await run(path.join(tree, 'configure'), CONFIGURE_FLAGS, { cwd: build, logFile: log, timeoutMs: 600_000, what: 'configure' }).catch((e) => fail('configuring', e));
      step('compiling qemu-system-x86_64');
      const jobs = String(Math.max(1, (await import('node:os')).availableParallelism()));
      await run('ninja', ['-j', jobs, 'qemu-system-x86_64'], {
        cwd: build,
        logFile: log,
        timeoutMs: 3_600_000,
        what: 'ninja',
        onLine: (l) => {
          const m = /^\[(\d+)\/(\d+)\]/.exec(l);
          if (m) update(`[${m[1]}/${m[2]}]`);
        },
      }).catch((e) => fail('compiling', e));
      const out = path.join(work, 'out');
      fs.mkdirSync(path.join(out, 'bin'), { recursive: true });
      fs.copyFileSync(path.join(build, 'qemu-system-x86_64'), path.join(out, 'bin', 'qemu-system-x86_64'));
      fs.chmodSync(path.join(out, 'bin', 'qemu-system-x86_64'), 0o755);
      const result: LabQemu = {
        binary: path.join(dest, 'bin', 'qemu-system-x86_64'),
        dataDirs: FIRMWARE_DIRS.filter((d) => fs.existsSync(d)),
        patches,
        sourceVersion,
        key,
      };
      fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(result, null, 2) + '\n');
      fs.copyFileSync(log, path.join(out, 'build.log'));
      publishDir(out, dest);
      return result;
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
}
