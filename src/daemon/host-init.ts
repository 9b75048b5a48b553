/**
 * `lockstep host init` and `lockstep host trust`: the host file and the TLS
 * identity of one machine, written with safe permissions, never replacing
 * what exists without --force.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { DEFAULT_API_PORT, DEFAULT_HEARTBEAT_PORT, DEFAULT_API_SOCKET, DEFAULT_STATE_DIR, hostSchema, loadHostFile, parseHostFile, type HostConfig } from '../config/host.js';
import { LockstepError } from '../util/errors.js';
import { writeFileAtomic } from '../util/files.js';
import { fingerprint, makeIdentity, readCertificate, writeIdentity } from './identity.js';

export interface HostInitOptions {
  file: string;
  name: string;
  replication: string;
  heartbeat?: string[];
  /** ADDRESS or ADDRESS:PORT of the TLS API; none: local only. */
  api?: string;
  stateDir?: string;
  /** The local API's socket (default /run/lockstep/api.sock). */
  socket?: string;
  /** ADDRESS:PORT where the daemon also serves its metrics in plain HTTP, read-only (none: on the API only). */
  metrics?: string;
  force?: boolean;
}

/** "10.0.0.1" → "10.0.0.1:7700"; "10.0.0.1:7701" stays. */
export function apiEndpoint(addr: string): string {
  return addr.includes(':') ? addr : `${addr}:${DEFAULT_API_PORT}`;
}

/** The host file's text: every field, each with what it is for. */
export function hostFileText(o: Omit<HostInitOptions, 'file' | 'force'>): string {
  const q = (v: string) => JSON.stringify(v);
  const hb = o.heartbeat?.length ? `[${o.heartbeat.map(q).join(', ')}]` : undefined;
  return [
    '# This host, as lockstep sees it (lockstep host init wrote it; lockstep host trust adds peers).',
    '# The daemon (lockstepd.service) reads it at start: restart it after a change.',
    '',
    `name: ${q(o.name)}                 # VM files name this host so`,
    `stateDir: ${q(o.stateDir ?? DEFAULT_STATE_DIR)}   # the daemon's state: one directory per VM, disk replicas`,
    '',
    'addresses:',
    `  replication: ${q(o.replication)}   # COLO's proxy, migration and NBD listen here (never 0.0.0.0)`,
    hb ? `  heartbeat: ${hb}   # one address per heartbeat path, a dedicated network first` : `  # heartbeat: [${q(o.replication)}]   # one address per heartbeat path (default: the replication address)`,
    `  # heartbeatPort: ${DEFAULT_HEARTBEAT_PORT}   # the other hosts' heartbeat sessions reach the daemon here, on each heartbeat address`,
    '',
    'api:',
    `  socket: ${q(o.socket ?? DEFAULT_API_SOCKET)}   # for root on this host (the lockstep command)`,
    o.api ? `  listen: ${q(apiEndpoint(o.api))}   # for the other hosts: TLS, both sides show pinned certificates` : '  # listen: "ADDRESS:7700"   # for the other hosts: TLS, both sides show pinned certificates',
    '',
    ...(o.metrics
      ? ['metrics:', `  listen: ${q(o.metrics)}   # Prometheus metrics, plain HTTP, read-only (also on the API: GET /metrics)`]
      : ['# metrics:', '#   listen: "ADDRESS:9477"   # Prometheus metrics, plain HTTP, read-only (they are always on the API: GET /metrics)']),
    '',
    'tls:',
    '  key: tls/host.key      # this host\'s private key (0600, never leaves the host)',
    '  cert: tls/host.crt     # its certificate: give it to the other hosts (lockstep host trust)',
    '',
    '# What a VM definition may name on this host, whoever sends it (a trusted host too). Each list, given,',
    '# replaces its default; a definition naming anything else is refused with the line that would allow it.',
    '# allow:',
    '#   qemu: [/usr/lib/lockstep]             # QEMU binaries (default: lockstep-qemu packages, lockstep\'s own build)',
    `#   images: [${q(path.join(o.stateDir ?? DEFAULT_STATE_DIR, 'images'))}]   # disk images (and disk.create); default STATEDIR/images`,
    `#   kernels: [${q(path.join(o.stateDir ?? DEFAULT_STATE_DIR, 'kernels'))}] # vm.kernel, vm.initrd; default STATEDIR/kernels`,
    '#   buffers: [/dev/shm]                   # replication.bufferDir',
    '#   taps: []                              # existing interfaces a VM file may name as its tap',
    '',
    '# The hosts this one trusts: lockstep host trust --name NAME --api ADDRESS FILE adds one.',
    'peers: {}',
    '',
  ].join('\n');
}

export interface HostInitResult {
  hostFile: string;
  certFile: string;
  fingerprint: string;
}

export async function hostInit(o: HostInitOptions): Promise<HostInitResult> {
  const text = hostFileText(o);
  // Checked as the daemon will read it, before anything is written.
  const h = parseHostFile(text, o.file);
  if (!o.force && fs.existsSync(o.file)) {
    throw new LockstepError(`${o.file} exists: this host is set up already`, { hint: 'see it with lockstep host show; pass --force to write it anew (the trusted peers are then forgotten)' });
  }
  fs.mkdirSync(path.dirname(path.resolve(o.file)), { recursive: true, mode: 0o755 });
  const id = await makeIdentity(h.name, [...new Set([h.addresses.replication, ...h.addresses.heartbeat, ...(h.api.listen ? [h.api.listen.split(':')[0]!] : [])])]);
  writeIdentity(h.tls.key, h.tls.cert, id, o.force ?? false);
  writeFileAtomic(o.file, text, { durable: true });
  return { hostFile: h.file, certFile: h.tls.cert, fingerprint: id.fingerprint };
}

export interface TrustOptions {
  file: string;
  name: string;
  api: string;
  certFile: string;
  /** Replace a peer of that name already trusted. */
  force?: boolean;
}

/** Pins another host's certificate under its name in the host file (comments kept). */
export function hostTrust(o: TrustOptions): { host: HostConfig; fingerprint: string } {
  const h = loadHostFile(o.file);
  let pem: string;
  try {
    pem = fs.readFileSync(o.certFile, 'utf8');
  } catch (err) {
    throw new LockstepError(`cannot read ${o.certFile}: ${(err as Error).message}`, { hint: "copy the other host's host.crt here first (e.g. with scp)" });
  }
  const cert = readCertificate(pem, o.certFile);
  if (cert.ca) throw new LockstepError(`${o.certFile} is a CA certificate, not a host's`, { hint: 'lockstep pins each host\'s own certificate, as lockstep host init wrote it' });
  if (o.name === h.name) throw new LockstepError(`"${o.name}" is this host's own name`, { hint: 'trust the other host under its name' });
  const own = fs.readFileSync(h.tls.cert, 'utf8');
  if (fingerprint(own) === cert.fingerprint256) throw new LockstepError(`${o.certFile} is this host's own certificate`, { hint: "copy the other host's /etc/lockstep/tls/host.crt" });
  if (h.peers[o.name] && !o.force) {
    const same = fingerprint(h.peers[o.name]!.cert) === cert.fingerprint256;
    throw new LockstepError(`host "${o.name}" is trusted already${same ? ' with this certificate' : ' with another certificate'}`, {
      hint: same ? 'nothing to do' : 'pass --force to pin the new one (only if that host was set up anew)',
    });
  }
  const doc = YAML.parseDocument(fs.readFileSync(o.file, 'utf8'));
  const peers = doc.get('peers');
  if (!YAML.isMap(peers) || peers.items.length === 0) doc.set('peers', doc.createNode({}));
  doc.setIn(['peers', o.name], doc.createNode({ api: apiEndpoint(o.api), cert: pem.trim() + '\n' }));
  const text = doc.toString();
  // Checked as the daemon will read it before it replaces the file.
  const next = parseHostFile(text, o.file);
  hostSchema.parse(YAML.parse(text));
  writeFileAtomic(o.file, text, { durable: true });
  return { host: next, fingerprint: cert.fingerprint256 };
}
