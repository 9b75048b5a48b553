/**
 * The API's client, for the CLI: over the local socket to this host's
 * daemon, or over TLS to a trusted host's, showing this host's certificate
 * and accepting only the certificate pinned under that host's name. Every
 * answer is parsed with its schema where it arrives; every call has a
 * timeout; every failure says what to do.
 */
import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
import type { z } from 'zod';
import type { HostConfig } from '../config/host.js';
import { LockstepError, errorMessage } from '../util/errors.js';
import { API_VERSION, apiErrorSchema, defineAnswerSchema, stopAnswerSchema, hostInfoSchema, vmListSchema, vmStatusSchema, eventsAnswerSchema, overviewSchema, type EventsAnswer, type HostInfo, type Overview, type VmStatus } from './api-types.js';
import { fingerprint } from './identity.js';

/** Answers larger than this are not read (a daemon never sends them). */
const MAX_ANSWER_BYTES = 16 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 10_000;

/** An error answer from a daemon: its HTTP status, what failed, what to do. */
export class ApiCallError extends LockstepError {
  constructor(
    readonly status: number,
    message: string,
    hint?: string,
  ) {
    super(message, hint === undefined ? {} : { hint });
    this.name = 'ApiCallError';
  }
}

type Target = { kind: 'local'; socket: string } | { kind: 'remote'; name: string; host: string; port: number; tls: https.RequestOptions; agent?: https.Agent };

export class ApiClient {
  private constructor(
    private readonly target: Target,
    private readonly timeoutMs: number,
  ) {}

  /**
   * The same host's daemon over one kept connection (TLS: one handshake for
   * many calls), for a caller that asks often (a daemon following its peers
   * for the dashboard). At most one socket; close() ends it.
   */
  keepAlive(): ApiClient {
    if (this.target.kind !== 'remote') return this;
    return new ApiClient({ ...this.target, agent: new https.Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1 }) }, this.timeoutMs);
  }

  /** Ends a kept connection. */
  close(): void {
    if (this.target.kind === 'remote') this.target.agent?.destroy();
  }

  /** This host's daemon, over its local socket (root). */
  static local(host: Pick<HostConfig, 'api'>, timeoutMs = DEFAULT_TIMEOUT_MS): ApiClient {
    return new ApiClient({ kind: 'local', socket: host.api.socket }, timeoutMs);
  }

  /** The daemon of trusted host `name`, over TLS, as this host. */
  static remote(host: HostConfig, name: string, timeoutMs = DEFAULT_TIMEOUT_MS): ApiClient {
    const peer = host.peers[name];
    if (!peer) {
      const known = Object.keys(host.peers);
      throw new LockstepError(`this host (${host.name}) does not know a host "${name}"`, {
        hint: known.length ? `known hosts: ${known.join(', ')}; add one with lockstep host trust` : 'trust it first: lockstep host trust --name NAME --api ADDRESS its-host.crt',
      });
    }
    const pinned = fingerprint(peer.cert);
    const [addr, port] = peer.api.split(':');
    return new ApiClient(
      {
        kind: 'remote',
        name,
        host: addr!,
        port: Number(port),
        tls: {
          key: fs.readFileSync(host.tls.key),
          cert: fs.readFileSync(host.tls.cert),
          ca: [peer.cert],
          minVersion: 'TLSv1.3',
          // Not the address's name: the certificate pinned for that host, and no other.
          checkServerIdentity: (_name, cert) =>
            cert.fingerprint256 === pinned ? undefined : new Error(`${peer.api} showed a certificate (${cert.fingerprint256}) that is not the one pinned for "${name}" (${pinned})`),
        },
      },
      timeoutMs,
    );
  }

  /** Who this client talks to, for messages. */
  get where(): string {
    return this.target.kind === 'local' ? `the local daemon (${this.target.socket})` : `host "${this.target.name}" (${this.target.host}:${this.target.port})`;
  }

  host(): Promise<HostInfo> {
    return this.call('GET', '/host', hostInfoSchema);
  }

  vms(): Promise<VmStatus[]> {
    return this.call('GET', '/vms', vmListSchema);
  }

  /** The VM as this host runs it; undefined when the host has no such VM. */
  async vm(name: string): Promise<VmStatus | undefined> {
    try {
      return await this.call('GET', `/vms/${encodeURIComponent(name)}`, vmStatusSchema);
    } catch (err) {
      if (err instanceof ApiCallError && err.status === 404) return undefined;
      throw err;
    }
  }

  defineVm(name: string, placed: unknown): Promise<{ name: string; outcome: 'created' | 'replaced' | 'unchanged' }> {
    return this.call('PUT', `/vms/${encodeURIComponent(name)}`, defineAnswerSchema, placed);
  }

  stopVm(name: string): Promise<{ name: string; host: string; qemu: string }> {
    return this.call('POST', `/vms/${encodeURIComponent(name)}/stop`, stopAnswerSchema);
  }

  endQemu(name: string): Promise<{ name: string; host: string; qemu: string }> {
    return this.call('POST', `/vms/${encodeURIComponent(name)}/end-qemu`, stopAnswerSchema);
  }

  resync(name: string): Promise<VmStatus> {
    return this.call('POST', `/vms/${encodeURIComponent(name)}/resync`, vmStatusSchema);
  }

  startVm(name: string): Promise<VmStatus> {
    return this.call('POST', `/vms/${encodeURIComponent(name)}/start`, vmStatusSchema);
  }

  /** The host's overview for the live views; only the checkpoint pauses after `pausesSinceMs` (its wall clock). */
  overview(pausesSinceMs?: number): Promise<Overview> {
    return this.call('GET', `/overview${pausesSinceMs === undefined ? '' : `?pausesSinceMs=${Math.floor(pausesSinceMs)}`}`, overviewSchema);
  }

  /** The host's journal records that match (of VM `vm` and the host's own; after `afterSeq`; at or after `sinceMs`). */
  events(q: { vm?: string; sinceMs?: number; afterSeq?: number; limit?: number } = {}): Promise<EventsAnswer> {
    const p = new URLSearchParams();
    if (q.vm !== undefined) p.set('vm', q.vm);
    if (q.sinceMs !== undefined) p.set('sinceMs', String(Math.floor(q.sinceMs)));
    if (q.afterSeq !== undefined) p.set('afterSeq', String(q.afterSeq));
    if (q.limit !== undefined) p.set('limit', String(q.limit));
    const qs = p.toString();
    return this.call('GET', `/events${qs ? `?${qs}` : ''}`, eventsAnswerSchema);
  }

  /**
   * A GET whose answer is not read here but handed over as it comes (the
   * dashboard's proxy: pages, and the live stream, which does not end). The
   * connection must be answered within the timeout; then it is the caller's.
   */
  stream(p: string, headers: http.OutgoingHttpHeaders = {}): Promise<{ res: http.IncomingMessage; abort: () => void }> {
    const t = this.target;
    return new Promise((resolve, reject) => {
      const opts = { method: 'GET', path: p, headers, agent: false as const };
      const req = t.kind === 'local' ? http.request({ ...opts, socketPath: t.socket }) : https.request({ ...t.tls, ...opts, host: t.host, port: t.port });
      const timer = setTimeout(() => req.destroy(new LockstepError(`${this.where} did not answer GET ${p.split('?')[0]} within ${this.timeoutMs} ms`, { hint: 'is the daemon hung? see journalctl -u lockstepd' })), this.timeoutMs);
      req.on('response', (res) => {
        clearTimeout(timer);
        resolve({ res, abort: () => req.destroy() });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(err instanceof LockstepError ? err : this.connectError(err));
      });
      req.end();
    });
  }

  async call<T>(method: string, p: string, schema: z.ZodType<T>, body?: unknown): Promise<T> {
    const { status, text } = await this.request(method, `/${API_VERSION}${p}`, body);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new LockstepError(`${this.where} answered ${method} ${p} with something that is not JSON (HTTP ${status})`, { hint: 'is that a lockstep daemon?' });
    }
    if (status >= 400) {
      const e = apiErrorSchema.safeParse(json);
      throw new ApiCallError(status, e.success ? e.data.error : `HTTP ${status}`, e.success ? e.data.hint : undefined);
    }
    const r = schema.safeParse(json);
    if (!r.success) throw new LockstepError(`${this.where} answered ${method} ${p} in a form this lockstep does not know: ${r.error.issues[0]?.message ?? ''}`, { hint: 'run the same lockstep version on every host' });
    return r.data;
  }

  private request(method: string, p: string, body: unknown): Promise<{ status: number; text: string }> {
    const t = this.target;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: http.OutgoingHttpHeaders = { accept: 'application/json', ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}) };
    return new Promise((resolve, reject) => {
      const req =
        t.kind === 'local'
          ? http.request({ socketPath: t.socket, method, path: p, headers, timeout: this.timeoutMs, agent: false })
          : https.request({ ...t.tls, host: t.host, port: t.port, method, path: p, headers, timeout: this.timeoutMs, agent: t.agent ?? false });
      // A daemon that refuses a body (413) closes before reading it: the rest of our write fails (EPIPE) on the
      // socket after the answer came. The answer is what counts; errors before it reach req's 'error' below.
      // Whether TLS got as far as our side's end of the handshake tells a refused certificate from a refused connection.
      let secured = false;
      req.on('socket', (sock) => {
        sock.on('error', () => {});
        sock.once('secureConnect', () => (secured = true));
      });
      const timer = setTimeout(() => req.destroy(new LockstepError(`${this.where} did not answer ${method} ${p.split('?')[0]} within ${this.timeoutMs} ms`, { hint: 'is the daemon hung? see journalctl -u lockstepd' })), this.timeoutMs);
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_ANSWER_BYTES) req.destroy(new LockstepError(`${this.where} sent an answer over ${MAX_ANSWER_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
        });
        res.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(err instanceof LockstepError ? err : this.connectError(err, secured));
      });
      req.end(payload);
    });
  }

  /** What a failed call means; `secured`: our end of the TLS handshake was done when it failed. */
  private connectError(err: NodeJS.ErrnoException, secured = false): LockstepError {
    const t = this.target;
    if (t.kind === 'local') {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') return new LockstepError(`the lockstep daemon does not run on this host (nothing answers on ${t.socket})`, { hint: 'start it: systemctl start lockstepd (or lockstep daemon)' });
      if (err.code === 'EACCES') return new LockstepError(`no permission to use ${t.socket}`, { hint: 'the local API is for root: run with sudo' });
    } else {
      if (err.code === 'ECONNREFUSED') return new LockstepError(`nothing answers at ${t.host}:${t.port} (host "${t.name}")`, { hint: `is lockstepd running there, with api.listen: "${t.host}:${t.port}" in its host file?` });
      // Closed before our end of the handshake was done: the daemon did not take the connection (busy, or it dropped
      // it), whatever our certificate.
      if (!secured && (err.code === 'ECONNRESET' || /socket hang up/.test(err.message))) {
        return new LockstepError(`host "${t.name}" (${t.host}:${t.port}) closed the connection before the TLS handshake was done: it did not take it (too many connections to it, or from this address)`, {
          hint: `try again; if it goes on, see the daemon's log on ${t.name} (journalctl -u lockstepd): it names who holds its connections`,
        });
      }
      // TLS 1.3: a server that refuses our certificate just closes the connection after the handshake.
      if (err.code === 'ECONNRESET' || /socket hang up/.test(err.message)) return new LockstepError(`host "${t.name}" (${t.host}:${t.port}) closed the connection: it does not trust this host's certificate`, { hint: `on ${t.name}: lockstep host trust --name THIS-HOST --api ADDRESS this-host.crt, then systemctl restart lockstepd there` });
      if (/certificate|pinned|alert|handshake/i.test(err.message)) return new LockstepError(`host "${t.name}" (${t.host}:${t.port}) and this host do not trust each other: ${err.message}`, { hint: 'each host must trust the other: lockstep host trust --name NAME --api ADDRESS its-host.crt, on both' });
    }
    return new LockstepError(`cannot reach ${this.where}: ${errorMessage(err)}`);
  }
}
