/**
 * Finding QEMU and learning what it can do. The binary comes from the config,
 * else $LOCKSTEP_QEMU, else PATH. Its abilities are probed, never guessed
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
  source: 'config' | 'env' | 'path' | 'explicit';
  version: { major: number; minor: number; micro: number };
  package: string;
  features: QemuFeatures;
}

export interface LocateOptions {
  /** From the config file. */
  configured?: string;
}

/** Picks the QEMU binary: config, then $LOCKSTEP_QEMU, then PATH. */
export function locateQemu(opts: LocateOptions = {}): { binary: string; source: QemuInfo['source'] } {
  const tryOne = (p: string, source: QemuInfo['source'], from: string) => {
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
export async function probeQemu(binary: string, source: QemuInfo['source'] = 'explicit'): Promise<QemuInfo> {
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
