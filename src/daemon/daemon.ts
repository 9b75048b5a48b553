/**
 * lockstep daemon: one per host (lockstepd.service). It serves the API on
 * the local socket (root) and, when the host file says where, over TLS to
 * the hosts it trusts, and keeps its state under the host's stateDir (one
 * directory per VM, in vms/). It owns the protected VMs of its host,
 * whichever role each plays.
 */
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createAdaptorServer } from '@hono/node-server';
import type { HostConfig } from '../config/host.js';
import { LockstepError, errorMessage } from '../util/errors.js';
import { lockstepVersion } from '../util/paths.js';
import { socketAnswers } from '../util/net.js';
import pino from 'pino';
import http from 'node:http';
import { apiApp, ApiRefusal, type DaemonView } from './api.js';
import type { HostInfo, Overview, VmStatus } from './api-types.js';
import { placedVmSchema, portsOfPlaced, VmHost, type PlacedVm, type VmObserving } from './vm-host.js';
import { Journal, type JournalDraft, type JournalQuery } from './journal.js';
import { DaemonMetrics } from './metrics.js';
import { VmWatch } from './observe.js';
import { LiveHub } from './live.js';
import { ApiClient } from './client.js';
import { portList, vmFileProblems } from '../config/vm.js';
import { confinementProblems } from './confine.js';
import { interfaceExists } from '../qemu/tap.js';
import { DEFAULT_HEARTBEAT_TIMEOUT_MS, DEFAULT_LEASE_MS, nodeName } from '../config/schema.js';
import type { ResolvedConfig } from '../config/load.js';
import { checkKeyFile, fingerprint, pairSecret } from './identity.js';
import { HostSessions } from '../node/host-sessions.js';
import { HandshakeAdmission, sourceAddress } from '../node/link.js';
import { LogBudget } from '../util/log-budget.js';
import { findArtifacts } from '../pair/runtime.js';

/** At most this many API connections at once per listener; more are refused by the kernel's backlog. */
const MAX_API_CONNECTIONS = 256;
/** The plain-HTTP metrics listener takes fewer: scrapers only. */
const MAX_METRICS_CONNECTIONS = 32;
/** The newest journal records an overview carries. */
const OVERVIEW_EVENTS = 60;
/** A TLS client has this long from connect to a finished handshake (Node's default is 120 s). */
export const API_HANDSHAKE_TIMEOUT_MS = 3000;
/** Connections of the TLS API in the handshake at once: in all, and per source address (a newer one drops its oldest). */
export const API_MAX_HANDSHAKES = 64;
export const API_MAX_HANDSHAKES_PER_SOURCE = 8;
/** Refused TLS connections logged at most this many per window; the rest are counted. */
const REFUSALS_LOGGED = 20;
const REFUSALS_WINDOW_MS = 10_000;
/** A client has this long to send its request's headers, and this long for the whole request. */
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;

type Server = ReturnType<typeof createAdaptorServer>;

export interface DaemonOptions {
  /** The monotonic clock (ms); injected for tests. */
  now?: () => number;
  /** The wall clock (ms since the epoch): the journal's times; injected for tests. */
  wallNow?: () => number;
  log?: (level: 'info' | 'warn' | 'error', msg: string, detail?: Record<string, unknown>) => void;
  /** Where the VMs' runtimes log (the daemon's journal); default: nowhere. */
  logger?: pino.Logger;
}

function listen(server: Server, how: { path: string } | { host: string; port: number }, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(
        new LockstepError(`cannot listen for the API ${what}: ${err.code === 'EADDRINUSE' ? 'the address is in use' : err.code === 'EADDRNOTAVAIL' ? 'this host has no such address' : err.message}`, {
          hint: 'is another lockstep daemon running? else fix api.listen in the host file',
        }),
      );
    };
    server.once('error', onError);
    server.listen(how, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

function closeServer(s: Server): Promise<void> {
  return new Promise((resolve) => {
    s.close(() => resolve());
    (s as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
  });
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** QEMU's own memory beside its guest's, as the daemon counts it (an estimate: TCG's code cache, device buffers). */
export const QEMU_OVERHEAD_BYTES = 64 * MiB;

/** Taps a host makes for its VMs at most (lstap0 ...). */
const TAPS_MAX = 1000;

/** The memory a VM takes on each of its hosts, as the daemon counts it. */
function memoryOf(placed: PlacedVm): number {
  return placed.vm.vm.memory + QEMU_OVERHEAD_BYTES;
}

/** A VM's agent timings as its config gives them (the config's defaults where it has no agents section). */
function agentTimings(c: ResolvedConfig | undefined): { heartbeatTimeoutMs: number; leaseMs: number } {
  return { heartbeatTimeoutMs: c?.agents?.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS, leaseMs: c?.agents?.leaseMs ?? DEFAULT_LEASE_MS };
}

export class Daemon implements DaemonView {
  private readonly now: () => number;
  private readonly log: NonNullable<DaemonOptions['log']>;
  private readonly servers: Server[] = [];
  /** The trusted hosts with their certificates' fingerprints (computed once), and by fingerprint. */
  private readonly peers: HostInfo['peers'];
  private readonly peerPrints: Map<string, string>;
  /** The memory this host gives its VMs (host file memory.forVms, else the machine's less 1 GiB). */
  private readonly memoryForVms: number;
  private startedAt = 0;
  private startedAtIso = '';
  private readonly vmHosts = new Map<string, VmHost>();
  private readonly logger: pino.Logger;
  /** The heartbeat sessions with the other hosts, which every VM's agent here talks to its peer agent through. */
  private sessions: HostSessions | undefined;
  private readonly wallNow: () => number;
  /** The event journal (open from start to stop). */
  private journal: Journal | undefined;
  readonly metrics: DaemonMetrics;
  /** What the daemon watches of each VM's agent, by VM name (kept across a VM's redefinition). */
  private readonly watches = new Map<string, VmWatch>();
  private readonly liveHub: LiveHub;
  /** Kept connections to the peers' APIs, for the live view (made on first use). */
  private readonly peerClients = new Map<string, ApiClient>();

  constructor(
    readonly host: HostConfig,
    o: DaemonOptions = {},
  ) {
    this.now = o.now ?? (() => performance.now());
    this.log = o.log ?? (() => {});
    this.peers = Object.entries(host.peers).map(([name, p]) => ({ name, api: p.api, fingerprint: fingerprint(p.cert) }));
    this.peerPrints = new Map(this.peers.map((p) => [p.fingerprint, p.name]));
    this.logger = o.logger ?? pino({ level: 'silent' });
    this.memoryForVms = host.memory.forVms ?? Math.max(0, os.totalmem() - GiB);
    this.wallNow = o.wallNow ?? Date.now;
    this.metrics = new DaemonMetrics({
      host: host.name,
      version: lockstepVersion(),
      startedAtMs: this.wallNow(),
      healthProblems: () => this.healthProblems(),
      vms: () => [...this.vmHosts.values()].map((v) => ({ status: v.status(), ...agentTimings(v.config) })),
      sessions: () => this.sessions?.status() ?? [],
      journal: () => ({ bytes: this.journal?.bytes ?? 0, records: this.journal?.appended ?? 0, writeErrors: this.journal?.writeErrors.count ?? 0 }),
      dashboardClients: () => this.liveHub.clients,
    });
    this.liveHub = new LiveHub({
      host: host.name,
      overview: (since) => this.overview(since),
      peers: () => [...new Set([...this.vmHosts.values()].flatMap((v) => v.placed.vm.hosts.filter((h) => h !== host.name)))].sort(),
      clientFor: (peer, timeoutMs) => {
        let c = this.peerClients.get(peer);
        if (!c) {
          c = ApiClient.remote(this.host, peer, timeoutMs).keepAlive();
          this.peerClients.set(peer, c);
        }
        return c;
      },
      wallNow: this.wallNow,
    });
  }

  /** Appends a record to the journal (written before it returns, flushed to disk right after). */
  record(d: JournalDraft): void {
    this.journal?.append(d);
  }

  /** VM `name`'s watch (made at its first definition here) and the journal, for its VmHost. */
  private observing(name: string): VmObserving {
    let w = this.watches.get(name);
    if (!w) {
      const timings = () => agentTimings(this.vmHosts.get(name)?.config);
      const heartbeatTimeoutMs = () => timings().heartbeatTimeoutMs;
      const leaseMs = () => timings().leaseMs;
      w = new VmWatch({ vm: name, heartbeatTimeoutMs, leaseMs, record: (d) => this.record(d), counters: this.metrics, wallNow: this.wallNow });
      this.watches.set(name, w);
      this.metrics.initVm(name);
    }
    return { watch: w, record: (d) => this.record(d) };
  }

  /** What keeps the daemon from doing its work, in words (none: healthy). */
  healthProblems(): string[] {
    const out: string[] = [];
    const e = this.journal?.writeErrors;
    if (e && e.count > 0) out.push(`${e.count} journal record${e.count > 1 ? 's' : ''} could not be written (last: ${e.last})`);
    for (const v of this.vmHosts.values()) {
      const st = v.status();
      if (st.phase === 'failed' && st.detail?.startsWith('the agent stopped')) out.push(`VM ${v.name}: ${st.detail}`);
    }
    return out;
  }

  async start(): Promise<void> {
    const h = this.host;
    checkKeyFile(h.tls.key);
    fs.mkdirSync(VmHost.vmsDir(this.host), { recursive: true, mode: 0o700 });
    fs.chmodSync(h.stateDir, 0o700);
    this.startedAt = this.now();
    this.startedAtIso = new Date(this.wallNow()).toISOString();
    this.journal = Journal.open({
      dir: path.join(h.stateDir, 'journal'),
      host: h.name,
      wallNow: this.wallNow,
      log: (level, msg, detail) => this.log(level, msg, detail),
    });
    this.record({ vm: null, kind: 'daemon', reason: `the daemon started (lockstep ${lockstepVersion()}, pid ${process.pid})`, figures: { pid: process.pid, version: lockstepVersion() } });
    // One secret per trusted host, derived once: our key with its pinned certificate.
    const ownKey = fs.readFileSync(h.tls.key, 'utf8');
    const secrets = new Map(Object.entries(h.peers).map(([name, p]) => [name, pairSecret(ownKey, h.name, p.cert, name)]));
    this.sessions = new HostSessions({ host: h.name, port: h.addresses.heartbeatPort, secretFor: (peer) => secrets.get(peer), log: this.logger.child({ part: 'sessions' }) });
    // The VMs defined here; those this host had started get their agents again (their QEMUs ran on).
    const { vms, problems } = VmHost.loadAll(this.host, this.logger, this.sessions, (name) => this.observing(name));
    for (const p of problems) this.log('error', 'a VM definition cannot be read; that VM is not run', { problem: p });
    for (const v of vms) {
      this.vmHosts.set(v.name, v);
      if (v.started) {
        this.log('info', 'attaching to a VM started before', { vm: v.name });
        await v.resume().catch((err: unknown) => this.log('error', 'a VM could not be attached again', { vm: v.name, err: errorMessage(err) }));
      }
    }

    // The local socket: root only. One left by a daemon that died is removed; one that answers is another daemon's.
    fs.mkdirSync(path.dirname(h.api.socket), { recursive: true, mode: 0o700 });
    if (fs.existsSync(h.api.socket)) {
      if (await socketAnswers(h.api.socket)) throw new LockstepError(`another lockstep daemon answers on ${h.api.socket}`, { hint: 'one daemon per host: see systemctl status lockstepd' });
      fs.rmSync(h.api.socket, { force: true });
    }
    const local = this.server(apiApp(this, 'local').fetch);
    await listen(local, { path: h.api.socket }, `on ${h.api.socket}`);
    this.servers.push(local);
    fs.chmodSync(h.api.socket, 0o600);
    this.log('info', 'API listening', { socket: h.api.socket });

    if (h.api.listen) {
      const [addr, port] = h.api.listen.split(':');
      const tls = this.server(apiApp(this, 'tls').fetch, {
        key: fs.readFileSync(h.tls.key),
        cert: fs.readFileSync(h.tls.cert),
        // Only pinned certificates: our own and the trusted hosts' (never the system's CAs).
        ca: [fs.readFileSync(h.tls.cert, 'utf8'), ...Object.values(h.peers).map((p) => p.cert)],
        requestCert: true,
        rejectUnauthorized: true,
        minVersion: 'TLSv1.3',
      });
      try {
        await listen(tls, { host: addr!, port: Number(port) }, `on ${h.api.listen}`);
      } catch (err) {
        await this.stop();
        throw err;
      }
      this.servers.push(tls);
      this.log('info', 'API listening', { tls: h.api.listen, peers: Object.keys(h.peers) });
    }

    if (h.metrics.listen) {
      const [addr, port] = h.metrics.listen.split(':');
      const m = this.metricsServer();
      try {
        await listen(m, { host: addr!, port: Number(port) }, `(metrics) on ${h.metrics.listen}`);
      } catch (err) {
        await this.stop();
        throw err;
      }
      this.servers.push(m);
      this.log('info', 'metrics listening (plain HTTP, read-only)', { listen: h.metrics.listen });
    }
  }

  /** The plain-HTTP metrics listener: GET /metrics and nothing else, for a scraper without a client certificate. */
  private metricsServer(): Server {
    const s = http.createServer((req, res) => {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('read-only: GET /metrics\n');
        return;
      }
      if ((req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('only /metrics here (the API and the dashboard need a client certificate)\n');
        return;
      }
      this.metrics.text().then(
        (m) => res.writeHead(200, { 'content-type': m.contentType }).end(req.method === 'HEAD' ? undefined : m.body),
        (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${errorMessage(err)}\n`),
      );
    });
    s.headersTimeout = HEADERS_TIMEOUT_MS;
    s.requestTimeout = REQUEST_TIMEOUT_MS;
    s.maxConnections = MAX_METRICS_CONNECTIONS;
    return s as unknown as Server;
  }

  private server(fetch: (req: Request, env: never) => Response | Promise<Response>, tls?: https.ServerOptions): Server {
    const s = tls
      ? createAdaptorServer({ fetch: fetch as never, createServer: https.createServer, serverOptions: { ...tls, handshakeTimeout: API_HANDSHAKE_TIMEOUT_MS } })
      : createAdaptorServer({ fetch: fetch as never });
    const srv = s as unknown as { headersTimeout: number; requestTimeout: number; maxConnections: number };
    srv.headersTimeout = HEADERS_TIMEOUT_MS;
    srv.requestTimeout = REQUEST_TIMEOUT_MS;
    srv.maxConnections = MAX_API_CONNECTIONS;
    if (tls) this.admitHandshakes(s);
    return s;
  }

  /**
   * The TLS API's connections before their handshake is done: a short
   * timeout, and a share per source address (its newer connection drops its
   * oldest; past the total, the oldest of whoever holds the most goes), so
   * that idle connections from one address never lock the trusted hosts out.
   * Refusals are logged under a budget.
   */
  private admitHandshakes(s: Server): void {
    const admission = new HandshakeAdmission(API_MAX_HANDSHAKES, API_MAX_HANDSHAKES_PER_SOURCE);
    const pending = new Map<string, () => void>();
    const budget = new LogBudget({ perWindow: REFUSALS_LOGGED, windowMs: REFUSALS_WINDOW_MS, now: this.now });
    const refused = (remote: string | null, why: string) => {
      const t = budget.take();
      if (t.ok) this.log('warn', 'refused a TLS connection', { remote, why, ...(t.leftOut ? { notLogged: t.leftOut } : {}) });
    };
    s.on('connection', (sock: net.Socket) => {
      const key = `${sock.remoteAddress}:${sock.remotePort}`;
      const release = admission.admit(sourceAddress(sock), (why) => {
        refused(sock.remoteAddress ?? null, why);
        sock.destroy();
      });
      pending.set(key, release);
      sock.once('close', () => {
        release();
        pending.delete(key);
      });
    });
    s.on('secureConnection', (tlsSock: net.Socket) => {
      const key = `${tlsSock.remoteAddress}:${tlsSock.remotePort}`;
      pending.get(key)?.();
      pending.delete(key);
    });
    s.on('tlsClientError', (err: Error, sock: net.Socket) => refused(sock.remoteAddress ?? null, errorMessage(err)));
  }

  async stop(): Promise<void> {
    if (this.journal) this.record({ vm: null, kind: 'daemon', reason: 'the daemon stops (its VMs run on: the next daemon attaches to them)', figures: { pid: process.pid } });
    this.liveHub.close();
    for (const c of this.peerClients.values()) c.close();
    this.peerClients.clear();
    // The agents end; their QEMUs run on (the next daemon attaches to them).
    await Promise.all([...this.vmHosts.values()].map((v) => v.stopAgent()));
    this.sessions?.close();
    const all = this.servers.splice(0);
    await Promise.all(all.map(closeServer));
    fs.rmSync(this.host.api.socket, { force: true });
    this.journal?.close();
    this.journal = undefined;
  }

  // ---- what the live views, the journal and the metrics read ----

  live(): LiveHub {
    return this.liveHub;
  }

  metricsText(): Promise<{ body: string; contentType: string }> {
    return this.metrics.text();
  }

  events(q: JournalQuery): { host: string; records: ReturnType<Journal['read']>['records']; lastSeq: number; truncated: boolean } {
    const j = this.journal;
    if (!j) throw new LockstepError('the daemon is not started');
    const r = j.read(q);
    return { host: this.host.name, records: r.records, lastSeq: j.lastSeq, truncated: r.truncated };
  }

  /** This host and its VMs for the live views; pauses after `pausesSinceMs` only (this host's clock). */
  overview(pausesSinceMs = 0): Overview {
    const problems = this.healthProblems();
    return {
      host: this.host.name,
      version: lockstepVersion(),
      atMs: this.wallNow(),
      uptimeMs: Math.round(this.now() - this.startedAt),
      healthy: problems.length === 0,
      healthProblems: problems,
      heartbeatSessions: this.sessions?.status() ?? [],
      vms: this.vmNames().map((n) => {
        const w = this.watches.get(n);
        const v = this.vmHosts.get(n)!;
        return {
          ...v.status(),
          ...agentTimings(v.config),
          checkpoints: w?.checkpoints ?? 0,
          pauseStats: w?.pauseStats() ?? { count: 0, p50Ms: null, p99Ms: null, maxMs: null },
          pauses: w?.pauses(pausesSinceMs) ?? [],
        };
      }),
      events: this.journal?.recent(OVERVIEW_EVENTS) ?? [],
    };
  }

  /**
   * An operator's command through the API, whoever asked: in the journal as it comes (status null), before it acts;
   * its answer in the metrics, and in the journal too when it was refused.
   */
  noteCommand(caller: string, command: string, vm: string | null, status: number | null, error: string | null): void {
    const what = `${command}${vm ? ` ${vm}` : ''}`;
    if (status === null) return this.record({ vm, kind: 'operator', reason: `${what}, asked by ${caller}`, figures: { command, caller } });
    this.metrics.operatorCommand(command, status);
    if (status >= 400) this.record({ vm, kind: 'operator', reason: `${what} refused: ${error ?? `HTTP ${status}`}`, figures: { command, caller, status } });
  }

  peerByFingerprint(fp: string): string | undefined {
    return this.peerPrints.get(fp);
  }

  vmNames(): string[] {
    return [...this.vmHosts.keys()].sort();
  }

  vms(): VmStatus[] {
    return this.vmNames().map((n) => this.vmHosts.get(n)!.status());
  }

  vm(name: string): VmStatus | undefined {
    return this.vmHosts.get(name)?.status();
  }

  define(name: string, body: unknown): { name: string; outcome: 'created' | 'replaced' | 'unchanged' } {
    if (!nodeName.safeParse(name).success) throw new LockstepError(`"${name}" is not a VM name`, { hint: 'a short lower-case name: letters, digits, "-"' });
    const r = placedVmSchema.safeParse(body);
    if (!r.success) throw new LockstepError(`the VM definition does not fit: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`, { hint: 'use the lockstep command of the same version as the daemon' });
    if (r.data.vm.name !== name) throw new LockstepError(`the definition is of VM "${r.data.vm.name}", not "${name}"`);
    const problems = vmFileProblems(r.data.vm);
    if (problems.length) throw new LockstepError(`the definition of VM "${name}" does not fit: ${problems.join('; ')}`, { hint: 'fix the VM file' });
    if (!r.data.vm.hosts.includes(this.host.name)) throw new ApiRefusal(409, `VM "${name}" is not one of this host's (${this.host.name}): its hosts are ${r.data.vm.hosts.join(' and ')}`);
    const cur = this.vmHosts.get(name);
    // What it names on this host (QEMU, image, kernel, buffers, tap) must be what the host file allows.
    const refusals = confinementProblems(r.data.vm, this.host, { existingTap: (t) => interfaceExists(t) && cur?.local.tap !== t });
    if (refusals.length) throw new ApiRefusal(403, `host ${this.host.name} does not allow what VM "${name}" names: ${refusals.map((x) => x.message).join('; ')}`, refusals.map((x) => x.hint).join('; '));
    // Placed here before it is kept: a definition this host cannot run, or whose ports it cannot give, is refused now.
    this.checkPorts(name, r.data);
    this.checkMemory(name, r.data);
    const local = { tap: this.tapFor(name, r.data, cur) };
    const candidate = new VmHost(this.host, r.data, this.logger.child({ vm: name }), local, this.sessions);
    // What this host needs to run it, its QEMU and its kernel, is found here or the VM is refused now, saying what to
    // install: a daemon never builds nor downloads anything (qemu/builds.ts).
    try {
      findArtifacts(candidate.config, { hostName: this.host.name });
    } catch (err) {
      if (err instanceof LockstepError && !(err instanceof ApiRefusal)) throw new ApiRefusal(409, err.message, err.hint);
      throw err;
    }
    if (cur) {
      const same = JSON.stringify({ ...cur.placed, definedAt: '' }) === JSON.stringify({ ...r.data, definedAt: '' });
      if (same) return { name, outcome: 'unchanged' };
      // A start runs on after its API answer, with the definition it began with: none may replace it meanwhile.
      if (cur.busy) throw new ApiRefusal(409, `VM "${name}" is ${cur.status().phase} on this host: its definition cannot be replaced now`, `wait until it runs, then end it first (lockstep down ${name}) to change it`);
      if (cur.everStarted) throw new ApiRefusal(409, `VM "${name}" has run on this host with another definition`, `end it first (lockstep down ${name}), or give the new one another name`);
    }
    // Accepted: watched from now on (its journal records, its metrics).
    const next = new VmHost(this.host, r.data, this.logger.child({ vm: name }), local, this.sessions, this.observing(name));
    next.save();
    this.vmHosts.set(name, next);
    this.log('info', cur ? 'VM definition replaced' : 'VM defined', { vm: name, hosts: r.data.vm.hosts });
    return { name, outcome: cur ? 'replaced' : 'created' };
  }

  async stopVm(name: string): Promise<{ name: string; host: string; qemu: string }> {
    const v = this.vmHost(name);
    this.log('info', 'stopping VM', { vm: name });
    const r = await v.stop();
    return { name, host: this.host.name, qemu: r.qemu };
  }

  async endQemu(name: string): Promise<{ name: string; host: string; qemu: string }> {
    return { name, host: this.host.name, qemu: await this.vmHost(name).endQemu() };
  }

  resync(name: string): VmStatus {
    const v = this.vmHost(name);
    v.resync();
    return v.status();
  }

  startVm(name: string): VmStatus {
    const v = this.vmHost(name, 'define it first: lockstep up -f FILE');
    v.checkStartable();
    this.log('info', 'starting VM', { vm: name, role: v.definedRole });
    void v.start().catch(() => undefined); // its phase says how it went
    return v.status();
  }

  /** The VM of that name on this host, or a 404 refusal. */
  private vmHost(name: string, hint?: string): VmHost {
    const v = this.vmHosts.get(name);
    if (!v) throw new ApiRefusal(404, `no VM "${name}" on this host`, hint);
    return v;
  }

  hostInfo(caller: string): HostInfo {
    const h = this.host;
    return {
      name: h.name,
      version: lockstepVersion(),
      pid: process.pid,
      startedAt: this.startedAtIso,
      uptimeMs: Math.round(this.now() - this.startedAt),
      addresses: h.addresses,
      api: { socket: h.api.socket, listen: h.api.listen ?? null },
      peers: this.peers,
      caller,
      vms: this.vmNames(),
      ports: { ...h.ports, used: [...this.portsInUse().keys()].sort((a, b) => a - b) },
      memory: { forVmsBytes: this.memoryForVms, usedBytes: this.memoryInUse() },
      heartbeatSessions: this.sessions?.status() ?? [],
    };
  }

  /**
   * The tap this host makes for VM `name` in bridge mode when its VM file
   * names none for this host: the one it had, else the lowest lstapN that
   * no other VM here holds and no interface of this host has.
   */
  private tapFor(name: string, placed: PlacedVm, cur: VmHost | undefined): string | undefined {
    const net = placed.vm.vm.network;
    if (net.mode !== 'tap') return undefined;
    const named = net.taps[this.host.name];
    // A tap the VM file names: the daemon's to make (and then its own) when it does not exist yet.
    if (named !== undefined) return cur?.local.tap === named || !interfaceExists(named) ? named : undefined;
    if (cur?.local.tap) return cur.local.tap;
    const held = new Set([...this.vmHosts.values()].flatMap((v) => (v.local.tap ? [v.local.tap] : [])));
    for (let n = 0; n < TAPS_MAX; n++) {
      const tap = `lstap${n}`;
      if (!held.has(tap) && !interfaceExists(tap)) return tap;
    }
    throw new ApiRefusal(409, `no tap name left for VM "${name}" on this host (lstap0-lstap${TAPS_MAX - 1} are taken)`, 'name its tap in the VM file (vm.network.taps), or end a VM');
  }

  /** A VM must fit in the memory this host gives its VMs, beside those defined here: refused (409) otherwise. */
  private checkMemory(name: string, placed: PlacedVm): void {
    const taken = this.memoryInUse(name);
    const needs = memoryOf(placed);
    if (taken + needs <= this.memoryForVms) return;
    const mib = (b: number) => `${Math.round(b / MiB)} MiB`;
    throw new ApiRefusal(
      409,
      `VM "${name}" needs about ${mib(needs)} on this host (its memory and QEMU's own), but ${mib(this.memoryForVms - taken)} of the ${mib(this.memoryForVms)} this host gives its VMs are left` +
        (taken ? ` (${[...this.vmHosts].filter(([n]) => n !== name).map(([n, v]) => `${n} ${mib(memoryOf(v.placed))}`).join(', ')})` : ''),
      'give it less memory, end a VM (lockstep down NAME, then remove it), or raise memory.forVms in the host file',
    );
  }

  /** The memory the VMs defined here take, as counted (`except`: leave that VM out). */
  private memoryInUse(except?: string): number {
    let sum = 0;
    for (const [name, v] of this.vmHosts) if (name !== except) sum += memoryOf(v.placed);
    return sum;
  }

  /** Every port the VMs defined here hold, and whose it is (`except`: leave that VM out). */
  private portsInUse(except?: string): Map<number, string> {
    const used = new Map<number, string>();
    for (const [name, v] of this.vmHosts) if (name !== except) for (const p of portList(portsOfPlaced(v.placed))) used.set(p, name);
    return used;
  }

  /** A VM's ports must be this host's to give, and free: refused (409) with what to do, otherwise. */
  private checkPorts(name: string, placed: PlacedVm): void {
    const { first, last } = this.host.ports;
    const ports = portsOfPlaced(placed);
    const outside = Object.entries(ports).filter(([, p]) => p < first || p > last);
    if (outside.length) {
      throw new ApiRefusal(409, `VM "${name}" would use port${outside.length > 1 ? 's' : ''} ${outside.map(([k, p]) => `${p} (${k})`).join(', ')}, outside this host's range ${first}-${last}`, 'leave ports out of the VM file (up then takes a free block), or widen ports in the host file');
    }
    const used = this.portsInUse(name);
    const taken = Object.entries(ports).filter(([, p]) => used.has(p));
    if (taken.length) {
      throw new ApiRefusal(409, `VM "${name}" would use port${taken.length > 1 ? 's' : ''} ${taken.map(([k, p]) => `${p} (${k}, VM "${used.get(p)}"'s)`).join(', ')} on this host`, 'leave ports out of the VM file: up then takes a block free on both hosts');
    }
  }
}
