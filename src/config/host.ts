/**
 * The host file (default /etc/lockstep/host.yaml): what one machine is to
 * lockstep, whatever VMs it protects. Its name (as VM files name it), the
 * addresses of its replication and heartbeat networks, where its daemon's
 * API listens, its TLS identity and the hosts it trusts, and where the daemon
 * keeps its state. `lockstep host init` writes it; the daemon and the CLI
 * read it. Relative paths are relative to the file.
 */
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { absolutePath, hostEndpoint, hostIpv4, nodeName, port, qemuPathProblem, size } from './schema.js';
import { ConfigError, parseYamlFile } from './load.js';
import { LockstepError } from '../util/errors.js';

export const DEFAULT_HOST_FILE = '/etc/lockstep/host.yaml';
export const DEFAULT_STATE_DIR = '/var/lib/lockstep';
export const DEFAULT_API_SOCKET = '/run/lockstep/api.sock';
/** The ports a host gives its VMs unless its file says otherwise: room for 142 VMs. */
export const DEFAULT_PORTS = { first: 9000, last: 9999 } as const;
/** The port of a daemon's TLS API when an address is given without one. */
export const DEFAULT_API_PORT = 7700;
/** Where a daemon listens for its peers' heartbeat sessions unless its host file says otherwise. */
export const DEFAULT_HEARTBEAT_PORT = 7701;

const peer = z
  .object({
    /** Where that host's daemon API listens (TLS). */
    api: hostEndpoint,
    /** Its certificate (PEM), as `lockstep host trust` copied it: the only one accepted from it. */
    cert: z.string(),
  })
  .strict();

export const hostSchema = z
  .object({
    name: nodeName.describe('this host, as VM files name it'),
    stateDir: z.string().default(DEFAULT_STATE_DIR),
    addresses: z
      .object({
        /** The replication network: COLO's proxy, migration and NBD listen here, never on 0.0.0.0. */
        replication: hostIpv4,
        /**
         * The heartbeat paths, one address each; list a dedicated network first and the replication address second
         * (a path over the replication network whose silence, while the other is heard, is a cut replication link).
         * Default: the replication address.
         */
        heartbeat: z.array(hostIpv4).min(1).max(8).optional(),
        /** Where the daemon listens, on each heartbeat address, for the heartbeat sessions of the hosts it shares VMs with. */
        heartbeatPort: port.default(DEFAULT_HEARTBEAT_PORT),
      })
      .strict(),
    api: z
      .object({
        /** Local API for root (the CLI on this host). */
        socket: z.string().default(DEFAULT_API_SOCKET),
        /** Remote API over TLS with mutual authentication: ADDRESS:PORT. None: local only. */
        listen: hostEndpoint.optional(),
      })
      .strict()
      .default({ socket: DEFAULT_API_SOCKET }),
    tls: z
      .object({
        key: z.string().default('tls/host.key'),
        cert: z.string().default('tls/host.crt'),
      })
      .strict()
      .default({ key: 'tls/host.key', cert: 'tls/host.crt' }),
    /**
     * The ports this host gives its VMs (data plane and agents, a block of 7 per VM, the same numbers on both hosts of
     * a VM): `up` takes a block free on both, and the daemon refuses a VM whose ports are outside this range or taken.
     */
    ports: z
      .object({ first: port, last: port })
      .strict()
      .default({ first: DEFAULT_PORTS.first, last: DEFAULT_PORTS.last }),
    /**
     * How much memory this host gives its VMs, whichever role each plays (a secondary runs a whole VM too). The
     * daemon refuses a VM that would go over it. Default: the machine's memory less 1 GiB for the host itself.
     */
    memory: z.object({ forVms: size('a memory size', { min: 1, max: 2 ** 50 }).optional() }).strict().default({}),
    /**
     * The QEMU this host runs its VMs with, unless a VM file names one: e.g. the lockstep-qemu package's
     * (/usr/lib/lockstep/qemu-10.0/bin/qemu-system-x86_64). Default: the installed lockstep-qemu package (the newest
     * line), else lockstep's own build. Never the distribution's QEMU by default: it lacks fixes COLO needs.
     */
    qemu: z.object({ binary: z.string().optional() }).strict().default({}),
    /**
     * Prometheus metrics: always on the API (GET /metrics, same authentication); `listen` ADDRESS:PORT also serves
     * them read-only over plain HTTP, for a scraper without a client certificate (put it on a management network).
     */
    metrics: z.object({ listen: hostEndpoint.optional() }).strict().default({}),
    /** The other hosts this one trusts, by name (`lockstep host trust` adds them). */
    peers: z.record(nodeName, peer).default({}),
    /**
     * What a VM's definition may name on this host, whoever sends it (a trusted host's `up -f` too): its QEMU
     * binaries (files, or directories whose files), and the directories of its disk images (where disk.create makes
     * one too), kernels and initrds, and COLO buffers; taps that exist and that lockstep did not make. Each list
     * replaces its default (see allowedFor in src/daemon/confine.ts): qemu: the lockstep-qemu packages, lockstep's
     * own build and qemu.binary above; images: STATEDIR/images; kernels: STATEDIR/kernels (and the demo guest);
     * buffers: /dev/shm; taps: none.
     */
    allow: z
      .object({
        qemu: z.array(absolutePath).max(64).optional(),
        images: z.array(absolutePath).max(64).optional(),
        kernels: z.array(absolutePath).max(64).optional(),
        buffers: z.array(absolutePath).max(64).optional(),
        taps: z.array(z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'expected an interface name')).max(256).optional(),
      })
      .strict()
      .default({}),
  })
  .strict();

export type HostFileInput = z.input<typeof hostSchema>;

export interface HostConfig extends z.output<typeof hostSchema> {
  file: string;
  addresses: { replication: string; heartbeat: string[]; heartbeatPort: number };
  tls: { key: string; cert: string };
  peers: Record<string, { api: string; cert: string }>;
}

export function parseHostFile(text: string, file: string): HostConfig {
  const h = parseYamlFile(hostSchema, text, file, 'the file lockstep host init writes');
  const problems: string[] = [];
  if (h.peers[h.name]) problems.push(`peers.${h.name}: that is this host's own name`);
  if (h.qemu.binary !== undefined && !path.isAbsolute(h.qemu.binary)) problems.push(`qemu.binary: "${h.qemu.binary}" must be an absolute path`);
  if (h.ports.last - h.ports.first + 1 < 7) problems.push(`ports: ${h.ports.first}-${h.ports.last} has room for no VM (each takes 7 consecutive ports)`);
  const stateDirProblem = qemuPathProblem(path.resolve(path.dirname(path.resolve(file)), h.stateDir));
  if (stateDirProblem) problems.push(`stateDir: "${h.stateDir}" ${stateDirProblem}: QEMU is given paths under it`);
  if (problems.length) throw new ConfigError(file, problems);
  const base = path.dirname(path.resolve(file));
  const abs = (p: string) => (path.isAbsolute(p) ? p : path.resolve(base, p));
  return {
    ...h,
    file: path.resolve(file),
    stateDir: abs(h.stateDir),
    addresses: { replication: h.addresses.replication, heartbeat: h.addresses.heartbeat ?? [h.addresses.replication], heartbeatPort: h.addresses.heartbeatPort },
    api: { ...h.api, socket: abs(h.api.socket) },
    tls: { key: abs(h.tls.key), cert: abs(h.tls.cert) },
  };
}

export function loadHostFile(file: string = DEFAULT_HOST_FILE): HostConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new LockstepError(`cannot read the host file ${file}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}`, {
      hint: code === 'ENOENT' ? 'create it with: lockstep host init --name NAME --replication ADDRESS' : 'run as root, or pass --host-file FILE',
    });
  }
  return parseHostFile(text, file);
}
