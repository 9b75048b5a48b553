/**
 * Finding QEMU and learning what it can do. The binary comes from the config
 * (a VM's qemu.binary, else its host file's), else $LOCKSTEP_QEMU, else the
 * installed lockstep-qemu package (the newest line), else PATH; the control
 * plane (pair/runtime.ts) puts lockstep's own build before PATH. Its
 * abilities are probed, never guessed
 * from a version number: `-version`, then QMP query-version,
 * query-qmp-schema and qom-list-types on a throw-away instance. Results are
 * cached per binary (path, size, mtime).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { run, which, isExecutable } from '../util/exec.js';
import { cacheDir } from '../util/paths.js';
import { LockstepError } from '../util/errors.js';
import { QmpClient } from '../qmp/client.js';
import { QemuProcess, connectStartingQemu } from './process.js';

export const DEFAULT_BINARY = 'qemu-system-x86_64';

export interface QemuFeatures {
  /** x-colo capability, x-colo-lost-heartbeat, query-colo-status. */
  colo: boolean;
  /** colo-compare, filter-mirror, filter-redirector, filter-rewriter objects. */
  coloProxy: boolean;
  /** The "replication" block driver (CONFIG_REPLICATION). */
  replication: boolean;
  /** The "quorum" block driver. */
  quorum: boolean;
  /** The yank command (recover hung connections). */
  yank: boolean;
  /** Chardev sockets take reconnect-ms (QEMU ≥ 9.2) rather than reconnect (seconds). */
  reconnectMs: boolean;
  /** Filters and colo-compare take vnet_hdr_support. */
  vnetHdrSupport: boolean;
  /** TLS with a pre-shared key (tls-creds-psk: QEMU built with GnuTLS), for the data plane. */
  tlsPsk: boolean;
  /** Accelerators compiled in (not whether they work: see accel.ts). */
  accelerators: string[];
}

export interface QemuInfo {
  binary: string;
  /** Where the binary choice came from. */
  source: QemuSource;
  version: { major: number; minor: number; micro: number };
  package: string;
  features: QemuFeatures;
}

/** Where a QEMU binary was found: the config, $LOCKSTEP_QEMU, the lockstep-qemu package, lockstep's build, PATH, or named on the command line. */
export type QemuSource = 'config' | 'env' | 'package' | 'lab' | 'path' | 'explicit';

/**
 * Where `lockstep qemu package`'s .deb installs a line's QEMU: beside the
 * distribution's (which stays in /usr/bin), never over it.
 */
export const PACKAGE_PREFIX = '/usr/lib/lockstep';

/** The Debian package of lockstep's QEMU of one line, e.g. lockstep-qemu-10.0. */
export function packageName(line: string): string {
  return `lockstep-qemu-${line}`;
}

/** The directory a line's package installs into; its binary is bin/qemu-system-x86_64 there. */
export function packageDir(line: string, prefix: string = PACKAGE_PREFIX): string {
  return path.join(prefix, `qemu-${line}`);
}

/** The lockstep-qemu packages installed here (their binaries), the newest line first. */
export function installedPackages(prefix: string = PACKAGE_PREFIX): Array<{ line: string; binary: string }> {
  let names: string[];
  try {
    names = fs.readdirSync(prefix);
  } catch {
    return [];
  }
  const found = names
    .map((n) => /^qemu-(\d+)\.(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ line: `${m[1]}.${m[2]}`, major: Number(m[1]), minor: Number(m[2]), binary: path.join(packageDir(`${m[1]}.${m[2]}`, prefix), 'bin', DEFAULT_BINARY) }))
    .filter((p) => isExecutable(p.binary));
  found.sort((a, b) => b.major - a.major || b.minor - a.minor);
  return found.map(({ line, binary }) => ({ line, binary }));
}

export interface LocateOptions {
  /** From the config file. */
  configured?: string;
}

/**
 * The QEMU someone chose for lockstep: the config's, else $LOCKSTEP_QEMU's,
 * else the installed lockstep-qemu package's (the newest line); undefined
 * when there is none of them.
 */
export function chosenQemu(opts: LocateOptions = {}): { binary: string; source: QemuSource } | undefined {
  const tryOne = (p: string, source: QemuSource, from: string) => {
    const resolved = p.includes('/') ? path.resolve(p) : which(p);
    if (!resolved || !isExecutable(resolved)) {
      throw new LockstepError(`QEMU binary ${p} (from ${from}) is not an executable file`, {
        hint: `fix ${from}, or install QEMU: apt-get install qemu-system-x86`,
      });
    }
    return { binary: resolved, source };
  };
  if (opts.configured) return tryOne(opts.configured, 'config', 'the config file (qemu.binary)');
  if (process.env.LOCKSTEP_QEMU) return tryOne(process.env.LOCKSTEP_QEMU, 'env', '$LOCKSTEP_QEMU');
  const pkg = installedPackages()[0];
  return pkg ? { binary: pkg.binary, source: 'package' } : undefined;
}

/** Picks a QEMU binary: the chosen one (chosenQemu), else PATH's. */
export function locateQemu(opts: LocateOptions = {}): { binary: string; source: QemuSource } {
  const chosen = chosenQemu(opts);
  if (chosen) return chosen;
  const found = which(DEFAULT_BINARY);
  if (!found) {
    throw new LockstepError(`${DEFAULT_BINARY} not found on PATH`, {
      hint: 'install it (apt-get install qemu-system-x86), or name one with $LOCKSTEP_QEMU or qemu.binary in the config',
    });
  }
  return { binary: found, source: 'path' };
}

/** Parses the first line of `qemu-system-x86_64 -version`. */
export function parseVersionOutput(text: string): { major: number; minor: number; micro: number; package: string } {
  const m = /QEMU emulator version (\d+)\.(\d+)\.(\d+)\s*(?:\((.*)\))?/.exec(text);
  if (!m) throw new LockstepError(`cannot read a QEMU version from: ${text.split('\n')[0]}`);
  return { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3]), package: m[4] ?? '' };
}

interface SchemaEntry {
  name: string;
  'meta-type': string;
  members?: Array<{ name: string }>;
  values?: string[];
  'arg-type'?: string;
}

/** Derives features from query-qmp-schema and qom-list-types answers. */
export function featuresFrom(schema: SchemaEntry[], qomTypes: string[]): QemuFeatures {
  const commands = new Set(schema.filter((e) => e['meta-type'] === 'command').map((e) => e.name));
  const enumValues = (pred: (vals: string[]) => boolean) => schema.some((e) => e['meta-type'] === 'enum' && e.values && pred(e.values));
  const memberNames = new Set(schema.flatMap((e) => (e.members ?? []).map((m) => m.name)));
  const types = new Set(qomTypes);
  const accelerators = qomTypes.filter((t) => t.endsWith('-accel')).map((t) => t.slice(0, -'-accel'.length)).sort();
  return {
    colo: commands.has('x-colo-lost-heartbeat') && commands.has('query-colo-status') && enumValues((v) => v.includes('x-colo')),
    coloProxy: ['colo-compare', 'filter-mirror', 'filter-redirector', 'filter-rewriter'].every((t) => types.has(t)),
    replication: enumValues((v) => v.includes('replication') && v.includes('quorum') && v.includes('qcow2')),
    quorum: enumValues((v) => v.includes('quorum') && v.includes('qcow2')),
    yank: commands.has('yank'),
    reconnectMs: memberNames.has('reconnect-ms'),
    vnetHdrSupport: memberNames.has('vnet_hdr_support') || types.has('colo-compare'),
    tlsPsk: types.has('tls-creds-psk'),
    accelerators,
  };
}

function probeCacheFile(binary: string): string {
  const st = fs.statSync(binary);
  const id = crypto.createHash('sha256').update(`${binary}\n${st.size}\n${st.mtimeMs}\nprobe-v2`).digest('hex').slice(0, 16);
  return path.join(cacheDir(), 'probe', `qemu-${id}.json`);
}

/**
 * Version and features of a QEMU binary. Starts it once with `-machine none`
 * (no guest) for about a second; later calls read the cache.
 */
export async function probeQemu(binary: string, source: QemuSource = 'explicit'): Promise<QemuInfo> {
  const cacheFile = probeCacheFile(binary);
  try {
    const cached = JSON.parse(fs.readFileSync(cacheFile, 'utf8')) as QemuInfo;
    return { ...cached, binary, source };
  } catch {
    /* probe */
  }
  const v = await run(binary, ['-version'], { timeoutMs: 10_000, what: `${binary} -version` });
  const parsed = parseVersionOutput(v.stdout);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-probe-'));
  const sock = path.join(dir, 'qmp.sock');
  const q = new QemuProcess({
    name: 'probe',
    binary,
    args: ['-machine', 'none', '-nodefaults', '-display', 'none', '-S', '-qmp', `unix:${sock},server=on,wait=off`],
    logFile: path.join(dir, 'qemu.log'),
  });
  let qmp: QmpClient | undefined;
  try {
    qmp = await connectStartingQemu(q, sock, { timeoutMs: 10_000, what: 'the probe QEMU (probing its features)' });
    const ver = await qmp.execute<{ qemu: { major: number; minor: number; micro: number }; package: string }>('query-version');
    const schema = await qmp.execute<SchemaEntry[]>('query-qmp-schema', undefined, { timeoutMs: 20_000 });
    const types = await qmp.execute<Array<{ name: string }>>('qom-list-types');
    const info: QemuInfo = {
      binary,
      source,
      version: ver.qemu ?? { major: parsed.major, minor: parsed.minor, micro: parsed.micro },
      package: (ver.package ?? parsed.package).trim(),
      features: featuresFrom(schema, types.map((t) => t.name)),
    };
    fs.mkdirSync(path.dirname(cacheFile), { recursive: true });
    fs.writeFileSync(cacheFile, JSON.stringify(info, null, 2) + '\n');
    return info;
  } finally {
    await qmp?.close();
    await q.stop(1000);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Checks that a probed QEMU can run COLO at all (and, with `tls`, the data plane's TLS), naming what is missing. */
export function assertColoCapable(info: QemuInfo, o: { tls?: boolean } = {}): void {
  const f = info.features;
  if (o.tls && !f.tlsPsk) {
    throw new LockstepError(`QEMU ${info.binary} has no TLS (tls-creds-psk: it was built without GnuTLS), and the data plane needs it`, {
      hint: "use a QEMU built with GnuTLS (Debian's qemu-system-x86 is); or, only on a replication network nobody else can reach, set replication.tls: false (see the README's \"The data plane\")",
    });
  }
  const missing = [
    !f.colo && 'COLO migration (x-colo)',
    !f.coloProxy && 'the COLO proxy objects (colo-compare, filter-*)',
    !f.replication && 'the replication block driver',
    !f.quorum && 'the quorum block driver',
  ].filter(Boolean);
  if (missing.length) {
    throw new LockstepError(`QEMU ${info.binary} (${info.version.major}.${info.version.minor}.${info.version.micro}) lacks ${missing.join(', ')}`, {
      hint: 'use a QEMU built with CONFIG_REPLICATION and COLO (Debian\'s qemu-system-x86 has them), or the lab QEMU (lockstep lab build-qemu)',
    });
  }
}
