/**
 * The lab QEMU: Debian's own QEMU source package of one line (7.2, bookworm's;
 * or 10.0, trixie's) plus lockstep's patch set for it (patches/qemu-LINE),
 * built for x86_64 only, with KVM and TCG: the one QEMU every host runs COLO
 * with (stock QEMU lacks fixes COLO needs: see the patches' headers and
 * qemu/fixes.ts).
 *
 * The source comes from `apt-get source` through a private deb-src list made
 * from the system's own deb entries (plus the line's own suite, e.g. trixie,
 * on the same mirror); the system's apt configuration is never touched. A tool
 * the line needs newer than the system's (10.0 needs meson >= 1.5; bookworm
 * has 1.0) is unpacked from bookworm-backports into the cache, not installed.
 * Builds land in <cache>/qemu/<key>/, key = hash of the line, the patch set's
 * code (not its messages) and the build recipe; each line's source tree and
 * build directory stay in <cache>/qemu/line-LINE.work/, so another patch set
 * of the line recompiles only what it changes. Builds are published
 * atomically, so a machine builds each patch set once and never sees a
 * half-built binary.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { run, which } from '../util/exec.js';
import { cacheDir, packageRoot } from '../util/paths.js';
import { LockstepError } from '../util/errors.js';
import { withDirLock, publishDir, removeStaleWork } from './cache.js';
import { fixesMarker, fixIdsOfPatches } from '../qemu/fixes.js';
import { FIRMWARE_DIRS, QEMU_LINES, defaultQemuLine, parseQemuLine, publishOwnQemu, type QemuLine } from '../qemu/builds.js';

export { FIRMWARE_DIRS, QEMU_LINES, defaultQemuLine, parseQemuLine, type QemuLine };

export interface LabQemu {
  /** The qemu-system-x86_64 binary. */
  binary: string;
  /** Firmware directories to pass with -L (the build ships no blobs). */
  dataDirs: string[];
  patches: string[];
  sourceVersion: string;
  key: string;
  /** The QEMU line (absent in builds made before there were lines: 7.2). */
  line?: QemuLine;
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
  // Partial patch sets (the tests' builds without one fix) recompile only what differs.
  'ccache',
];

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
  // One build for every host: KVM where it works, TCG where it does not (lockstep decides by booting).
  '--enable-kvm',
  '--enable-tcg',
  '--disable-tools',
  '--disable-guest-agent',
  '--disable-debug-info',
  '--disable-install-blobs',
];

const SOURCE_PACKAGE = 'qemu';

interface LineRecipe {
  /** Debian's versions of the line that the patches are written for (the newest available is built). */
  versionPrefix: string;
  /** What a user runs it on, for messages. */
  debian: string;
  /** A Debian suite to add as deb-src (on the system's Debian mirror), when the system's own do not carry the line. */
  sourceSuite?: string;
  /** The line's build needs a newer meson than bookworm's (1.0): bookworm-backports' is unpacked into the cache. */
  mesonFromBackports?: boolean;
}

const LINES: Record<QemuLine, LineRecipe> = {
  '7.2': { versionPrefix: '1:7.2+dfsg', debian: "Debian 12's 7.2 (bookworm)" },
  // 10.0.7 and later: earlier ones lack upstream's fix of the transition into COLO (0b5bf4ea76), which the series does not carry.
  '10.0': { versionPrefix: '1:10.0.', debian: "Debian 13's 10.0 (trixie)", sourceSuite: 'trixie', mesonFromBackports: true },
};

/** A --qemu option's line: `v`, else the default line. */
export function qemuLineOption(v: string | undefined): QemuLine {
  return v === undefined ? defaultQemuLine() : parseQemuLine(v, `--qemu ${v}`);
}

export function patchesDir(line: QemuLine = defaultQemuLine()): string {
  return path.join(packageRoot(), 'patches', `qemu-${line}`);
}

/** The whole patch set of a line, in order (from its series file). */
export function patchSeries(line: QemuLine = defaultQemuLine()): string[] {
  return fs
    .readFileSync(path.join(patchesDir(line), 'series'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
}

/**
 * The code a patch changes: from its first `diff --git` line on. A patch's
 * message is prose, and editing it rebuilds nothing.
 */
export function patchCode(text: string): string {
  const at = text.search(/^diff --git /m);
  return at < 0 ? text : text.slice(at);
}

export function buildKey(patches: string[], line: QemuLine = defaultQemuLine()): string {
  const r = LINES[line];
  const h = crypto.createHash('sha256');
  // v3: the line always, and each patch's code only (v2: the build names its fixes in its package string, and has KVM).
  h.update(`lab-qemu-recipe-v3\n${SOURCE_PACKAGE} ${r.versionPrefix}\n${CONFIGURE_FLAGS.join(' ')}\n`);
  h.update(`line ${line} suite ${r.sourceSuite ?? '-'} meson ${r.mesonFromBackports ? 'bookworm-backports' : 'system'}\n`);
  for (const p of patches) {
    h.update(`\n${p}\n`);
    h.update(patchCode(fs.readFileSync(path.join(patchesDir(line), p), 'utf8')));
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
export function findLabQemu(line: QemuLine = defaultQemuLine(), patches: string[] = patchSeries(line)): LabQemu | undefined {
  return readManifest(path.join(cacheDir(), 'qemu', buildKey(patches, line)));
}

export interface BuildOptions {
  /** The QEMU line. Default: defaultQemuLine(). */
  line?: QemuLine;
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

export const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

/** The Debian mirror the system's own sources use (its bookworm entry), else deb.debian.org. */
export function debianMirror(): string {
  const texts: string[] = [];
  for (const f of ['/etc/apt/sources.list', ...(fs.existsSync('/etc/apt/sources.list.d') ? fs.readdirSync('/etc/apt/sources.list.d').map((x) => path.join('/etc/apt/sources.list.d', x)) : [])]) {
    try {
      texts.push(fs.readFileSync(f, 'utf8'));
    } catch {
      /* unreadable: skip */
    }
  }
  for (const t of texts) {
    for (const stanza of t.split(/\n\s*\n/)) {
      const uri = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
      if (uri && /^Suites:.*\bbookworm\b/m.test(stanza) && !/security/.test(uri)) return uri.replace(/\/$/, '');
    }
    const one = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/m.exec(t)?.[1];
    if (one && !/security/.test(one)) return one.replace(/\/$/, '');
  }
  return 'http://deb.debian.org/debian';
}

/** Where the unpacked meson from bookworm-backports lives (see backportedMeson). */
function backportedMesonSite(): string {
  return path.join(cacheDir(), 'tools', 'meson-bookworm-backports', 'usr', 'lib', 'python3', 'dist-packages');
}

/**
 * Meson from bookworm-backports, unpacked (never installed) under the cache:
 * the PYTHONPATH that makes QEMU's configure find it. It is pure Python.
 */

async function backportedMeson(aptOpts: string[], log: string, step: (m: string) => void): Promise<string> {
  const root = path.join(cacheDir(), 'tools', 'meson-bookworm-backports');
  const site = backportedMesonSite();
  if (fs.existsSync(path.join(site, 'mesonbuild'))) return site;
  step('fetching meson from bookworm-backports (QEMU 10.0 needs >= 1.5; unpacked into the cache, not installed)');
  fs.mkdirSync(path.dirname(root), { recursive: true });
  const dl = fs.mkdtempSync(path.join(path.dirname(root), 'meson-dl-'));
  try {
    await run('apt-get', [...aptOpts, 'download', 'meson/bookworm-backports'], { cwd: dl, logFile: log, timeoutMs: 300_000, what: 'apt-get download meson/bookworm-backports' });
    const deb = fs.readdirSync(dl).find((f) => f.endsWith('.deb'));
    if (!deb) throw new LockstepError('apt-get download meson/bookworm-backports downloaded nothing');
    const out = path.join(dl, 'x');
    await run('dpkg-deb', ['-x', path.join(dl, deb), out], { logFile: log, timeoutMs: 60_000, what: 'dpkg-deb -x meson' });
    publishDir(out, root);
  } finally {
    fs.rmSync(dl, { recursive: true, force: true });
  }
  return site;
}

/**
 * Writes a private apt configuration whose only sources are deb-src twins of
 * the system's deb sources, and returns the apt-get options that select it.
 */
function privateAptSources(dir: string, extra: string[] = []): string[] {
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
  if (extra.length) {
    fs.writeFileSync(path.join(parts, `${n++}-lockstep-extra.list`), extra.join('\n') + '\n');
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

/** The newest of Debian versions `versions` (dpkg's ordering). */
async function newestVersion(versions: string[]): Promise<string> {
  let best = versions[0]!;
  for (const v of versions.slice(1)) {
    const r = await run('dpkg', ['--compare-versions', v, 'gt', best], { allowFailure: true, what: 'dpkg --compare-versions' });
    if (r.code === 0) best = v;
  }
  return best;
}

/** What a line's kept work tree holds: its source, the patches applied to it in order, and the recipe it was configured by. */
interface WorkState {
  recipe: string;
  sourceVersion: string;
  applied: string[];
  /** Each applied patch's code as it was applied (a hash of patchCode): a patch edited since cannot be reversed. */
  codes?: Record<string, string>;
}

/** The hash of a patch file's code, as it is now in this checkout (undefined: the checkout has no such patch). */
function patchCodeHash(line: QemuLine, p: string): string | undefined {
  const file = path.join(patchesDir(line), p);
  if (!fs.existsSync(file)) return undefined;
  return crypto.createHash('sha256').update(patchCode(fs.readFileSync(file, 'utf8'))).digest('hex').slice(0, 16);
}

/**
 * How a tree with patches `applied` (in order) becomes one with `wanted`:
 * reverse, last first, every applied patch after their common prefix, then
 * apply the rest of `wanted` in order. Patches only ever stack: a patch is
 * never applied to a tree it was not written against.
 */
export function patchSteps(applied: readonly string[], wanted: readonly string[]): { reverse: string[]; apply: string[] } {
  let common = 0;
  while (common < applied.length && common < wanted.length && applied[common] === wanted[common]) common++;
  return { reverse: applied.slice(common).reverse(), apply: wanted.slice(common) };
}

function readWorkState(work: string): WorkState | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(work, 'state.json'), 'utf8')) as WorkState;
  } catch {
    return undefined;
  }
}

function writeWorkState(work: string, st: WorkState): void {
  fs.writeFileSync(path.join(work, 'state.json'), JSON.stringify(st, null, 2) + '\n');
}

/**
 * Returns the lab QEMU for the patch set, building it first when it is not
 * cached (6-9 minutes on 2 cores for a line's first; another patch set of
 * the line: the files it changes, under a minute). Progress goes to the callbacks, the
 * full output to <cache>/qemu/<key>.build.log.
 */
export async function ensureLabQemu(opts: BuildOptions = {}): Promise<LabQemu> {
  const line = opts.line ?? defaultQemuLine();
  const recipe = LINES[line];
  const patches = opts.patches ?? patchSeries(line);
  for (const p of patches) {
    if (!fs.existsSync(path.join(patchesDir(line), p))) throw new LockstepError(`unknown patch ${p}`, { hint: `patches are in ${patchesDir(line)}` });
  }
  const key = buildKey(patches, line);
  const root = path.join(cacheDir(), 'qemu');
  const dest = path.join(root, key);
  // The line's whole patch set is lockstep's own build of the line: published for the daemons and `up` to find.
  const whole = patches.join('\n') === patchSeries(line).join('\n');
  const published = (b: LabQemu): LabQemu => {
    if (whole) publishOwnQemu({ binary: b.binary, dataDirs: b.dataDirs, line, key: b.key });
    return b;
  };
  const cached = readManifest(dest);
  if (cached) return published(cached);
  fs.mkdirSync(root, { recursive: true });
  // One build of a line at a time, in one work tree kept between builds: another patch set of the line is the tree
  // with patches reversed or applied and ninja run again, so only the files they touch (and the version string's)
  // recompile. A tree of another recipe, or one a failed build left, is made anew (through ccache).
  return withDirLock(path.join(root, `line-${line}.lock`), `building the lab QEMU ${line}`, async () => {
    const again = readManifest(dest);
    if (again) return published(again);
    const step = opts.onStep ?? (() => {});
    const update = opts.onUpdate ?? (() => {});
    const log = path.join(root, `${key}.build.log`);
    fs.writeFileSync(log, `lab QEMU ${line} build ${new Date().toISOString()}\npatches: ${patches.join(' ') || '(none)'}\n`);
    removeStaleWork(root, `${key}.tmp-`); // an output a killed build left (and work dirs of builds before there were lines)
    const work = path.join(root, `line-${line}.work`);
    const tree = path.join(work, 'src', 'qemu');
    const build = path.join(work, 'build');
    const recipeKey = buildKey([], line);
    const fail = (what: string, err: unknown): never => {
      throw new LockstepError(`building the lab QEMU failed while ${what}: ${(err as Error).message.split('\n')[0]}`, {
        cause: err,
        hint: `the full log is ${log}`,
      });
    };
    // Depend mode: a miss costs no extra preprocessor run (measured: a cold build 566 s with it off, against 406 s without ccache).
    const env: NodeJS.ProcessEnv = { ...process.env, CCACHE_DIR: path.join(cacheDir(), 'ccache'), CCACHE_MAXSIZE: '4G', CCACHE_DEPEND: '1' };
    // QEMU's configure hands meson the compiler in a machine file, where meson does not add ccache by itself.
    if (which('ccache') && !process.env.CC) env.CC = 'ccache cc';
    // The fixes it carries, where -version and query-version show them (lockstep qemu info; assertColoFixes).
    const pkgversion = [`lockstep ${line} build`, fixesMarker(fixIdsOfPatches(patches))].join(', ');
    try {
      let st = readWorkState(work);
      // A patch the tree carries that this checkout does not have (another branch's series), or has with other code
      // (edited since it was applied), cannot be reversed.
      const foreign = st?.applied.filter((p) => { const h = patchCodeHash(line, p); return h === undefined || st?.codes?.[p] !== h; }) ?? [];
      if (foreign.length) step(`the ${line} tree's patches are not this checkout's (${foreign.join(', ')}: missing here, or edited since): making it anew`);
      const reuse =
        st !== undefined &&
        st.recipe === recipeKey &&
        foreign.length === 0 &&
        fs.existsSync(path.join(build, 'build.ninja')) &&
        fs.existsSync(tree) &&
        (!recipe.mesonFromBackports || fs.existsSync(path.join(backportedMesonSite(), 'mesonbuild')));
      if (reuse) {
        step(`reusing the ${line} tree (qemu ${st!.sourceVersion}; patches applied: ${st!.applied.join(' ') || 'none'})`);
        if (recipe.mesonFromBackports) env.PYTHONPATH = await backportedMeson([], log, step);
      } else {
        fs.rmSync(work, { recursive: true, force: true });
        fs.mkdirSync(work);
        st = { recipe: recipeKey, sourceVersion: await fetchSource(line, work, env, log, step, fail), applied: [] };
        writeWorkState(work, st);
      }
      const state = st!;
      const steps = patchSteps(state.applied, patches);
      for (const p of steps.reverse) {
        step(`reversing ${p}`);
        await run('patch', ['-p1', '-R', '--batch', '-i', path.join(patchesDir(line), p)], { cwd: tree, logFile: log, what: `patch -R ${p}` }).catch((e) => fail(`reversing ${p}`, e));
        state.applied.pop();
        if (state.codes) delete state.codes[p];
        writeWorkState(work, state);
      }
      for (const p of steps.apply) {
        step(`applying ${p}`);
        await run('patch', ['-p1', '--forward', '--batch', '-i', path.join(patchesDir(line), p)], { cwd: tree, logFile: log, what: `patch ${p}` }).catch((e) => fail(`applying ${p}`, e));
        state.applied.push(p);
        state.codes = { ...state.codes, [p]: patchCodeHash(line, p)! };
        writeWorkState(work, state);
      }
      if (reuse) {
        step('setting its version string');
        const meson = fs.existsSync(path.join(build, 'pyvenv', 'bin', 'meson')) ? path.join(build, 'pyvenv', 'bin', 'meson') : 'meson';
        await run(meson, ['configure', `-Dpkgversion=${pkgversion}`], { cwd: build, env, logFile: log, timeoutMs: 300_000, what: 'meson configure' }).catch((e) => fail('configuring', e));
      } else {
        step('configuring (x86_64-softmmu only)');
        fs.mkdirSync(build);
        await run(path.join(tree, 'configure'), [...CONFIGURE_FLAGS, `--with-pkgversion=${pkgversion}`], { cwd: build, env, logFile: log, timeoutMs: 600_000, what: 'configure' }).catch((e) => fail('configuring', e));
      }
      step('compiling qemu-system-x86_64');
      const jobs = String(Math.max(1, (await import('node:os')).availableParallelism()));
      await run('ninja', ['-j', jobs, 'qemu-system-x86_64'], {
        cwd: build,
        env,
        logFile: log,
        timeoutMs: 3_600_000,
        what: 'ninja',
        onLine: (l) => {
          const m = /^\[(\d+)\/(\d+)\]/.exec(l);
          if (m) update(`[${m[1]}/${m[2]}]`);
        },
      }).catch((e) => fail('compiling', e));
      const out = path.join(root, `${key}.tmp-out`);
      fs.rmSync(out, { recursive: true, force: true });
      fs.mkdirSync(path.join(out, 'bin'), { recursive: true });
      fs.copyFileSync(path.join(build, 'qemu-system-x86_64'), path.join(out, 'bin', 'qemu-system-x86_64'));
      fs.chmodSync(path.join(out, 'bin', 'qemu-system-x86_64'), 0o755);
      const result: LabQemu = {
        binary: path.join(dest, 'bin', 'qemu-system-x86_64'),
        dataDirs: FIRMWARE_DIRS.filter((d) => fs.existsSync(d)),
        patches,
        sourceVersion: state.sourceVersion,
        key,
        line,
      };
      fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(result, null, 2) + '\n');
      fs.copyFileSync(log, path.join(out, 'build.log'));
      publishDir(out, dest);
      return published(result);
    } catch (err) {
      // A half-patched or half-configured tree is not one to build on again.
      fs.rmSync(work, { recursive: true, force: true });
      throw err;
    }
  });
}

/** Fetches the line's newest Debian source into `work`/src/qemu (Debian's patches applied) and returns its version. */
async function fetchSource(line: QemuLine, work: string, env: NodeJS.ProcessEnv, log: string, step: (m: string) => void, fail: (what: string, err: unknown) => never): Promise<string> {
  const recipe = LINES[line];
  const missing = ['apt-get', 'dpkg-source', 'meson', 'ninja', 'cc', 'pkg-config', 'patch'].filter((t) => !which(t));
  if (missing.length) {
    throw new LockstepError(`cannot build the lab QEMU: ${missing.join(', ')} not installed`, {
      hint: `apt-get install ${BUILD_DEPENDENCIES.join(' ')} (scripts/setup.sh does this)`,
    });
  }
  step(`fetching ${recipe.debian} QEMU source package`);
  const mirror = debianMirror();
  const extra = [
    ...(recipe.sourceSuite ? [`deb-src [signed-by=${DEBIAN_KEYRING}] ${mirror} ${recipe.sourceSuite} main`] : []),
    ...(recipe.mesonFromBackports ? [`deb [signed-by=${DEBIAN_KEYRING}] ${mirror} bookworm-backports main`] : []),
  ];
  const aptOpts = privateAptSources(path.join(work, 'apt'), extra);
  await run('apt-get', [...aptOpts, 'update'], { logFile: log, timeoutMs: 600_000, what: 'apt-get update (private deb-src list)' }).catch((e) => fail('fetching the source index', e));
  const policy = await run('apt-cache', [...aptOpts, 'showsrc', SOURCE_PACKAGE], { logFile: undefined, what: 'apt-cache showsrc qemu' }).catch((e) => fail('looking up the source package', e));
  const versions = [...policy.stdout.matchAll(/^Version:\s*(\S+)/gm)].map((m) => m[1]!).filter((v) => v.startsWith(recipe.versionPrefix));
  if (versions.length === 0) fail('looking up the source package', new Error(`no ${SOURCE_PACKAGE} ${recipe.versionPrefix}* in the configured sources`));
  // The newest of the line (the sources may carry others, e.g. trixie's next major in sid).
  const newest = await newestVersion(versions);
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  await run('apt-get', [...aptOpts, 'source', '--download-only', `${SOURCE_PACKAGE}=${newest}`], { cwd: src, logFile: log, timeoutMs: 900_000, what: 'apt-get source qemu' }).catch((e) => fail('downloading the source package', e));
  const dsc = fs.readdirSync(src).find((f) => f.endsWith('.dsc'));
  if (!dsc) fail('downloading the source package', new Error('no .dsc downloaded'));
  const sourceVersion = /^qemu_(.*)\.dsc$/.exec(dsc!)?.[1] ?? 'unknown';
  if (!sourceVersion.startsWith(recipe.versionPrefix.slice(2))) {
    fail('checking the source version', new Error(`got qemu ${sourceVersion}; the patch set is for ${recipe.debian}`));
  }
  if (recipe.mesonFromBackports) env.PYTHONPATH = await backportedMeson(aptOpts, log, step).catch((e) => fail('fetching meson from bookworm-backports', e));
  step(`unpacking qemu ${sourceVersion} with Debian's patches`);
  await run('dpkg-source', ['--no-check', '-x', dsc!, 'qemu'], { cwd: src, logFile: log, timeoutMs: 300_000, what: 'dpkg-source -x' }).catch((e) => fail('unpacking the source', e));
  // The downloaded archives are unpacked, the private source lists used: only the tree is kept.
  for (const f of fs.readdirSync(src)) if (f !== 'qemu') fs.rmSync(path.join(src, f), { recursive: true, force: true });
  fs.rmSync(path.join(work, 'apt'), { recursive: true, force: true });
  return sourceVersion;
}
