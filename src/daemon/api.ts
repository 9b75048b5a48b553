/**
 * The daemon's HTTP API (hono), the same on both listeners: the local unix
 * socket (root on this host) and TLS (trusted hosts, each identified by its
 * pinned certificate). Routing only: what the daemon knows comes from the
 * `DaemonView` it is given, so the routes are tested without sockets.
 */
import type { TLSSocket } from 'node:tls';
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { streamSSE } from 'hono/streaming';
import type { HttpBindings } from '@hono/node-server';
import { API_VERSION, type ApiError, type EventsAnswer, type HostInfo, type Overview, type VmStatus } from './api-types.js';
import type { JournalQuery } from './journal.js';
import { MAX_WATCHERS, type LiveHub } from './live.js';
import { dashboardFile } from './dashboard.js';
import { LockstepError } from '../util/errors.js';

/** A request the daemon refuses, with the HTTP status that says why (403: this host does not allow it, 404: no such thing, 409: not now). */
export class ApiRefusal extends LockstepError {
  constructor(
    readonly status: 403 | 404 | 409,
    message: string,
    hint?: string,
  ) {
    super(message, hint === undefined ? {} : { hint });
    this.name = 'ApiRefusal';
  }
}

/** A request body larger than this is refused (VM definitions are a few KiB). */
export const MAX_BODY_BYTES = 256 * 1024;

export interface DaemonView {
  hostInfo(caller: string): HostInfo;
  vms(): VmStatus[];
  vm(name: string): VmStatus | undefined;
  /** Keeps a VM's definition (its body is checked there); says whether it was new. */
  define(name: string, body: unknown): { name: string; outcome: 'created' | 'replaced' | 'unchanged' };
  /** Begins starting this host's part of a VM; the start goes on after the answer (see the VM's phase). */
  startVm(name: string): VmStatus;
  /** lockstep down on this host: its agent, then its QEMU. */
  stopVm(name: string): Promise<{ name: string; host: string; qemu: string }>;
  /** Ends this host's QEMU of the VM, its agent running on (a failover by hand). */
  endQemu(name: string): Promise<{ name: string; host: string; qemu: string }>;
  /** Asks this host's agent, which runs the VM alone, to resync the other host now; the VM's status at once. */
  resync(name: string): VmStatus;
  /** The name of the trusted host whose certificate has this SHA-256 fingerprint, if any. */
  peerByFingerprint(fp: string): string | undefined;
  /** The Prometheus exposition text. */
  metricsText(): Promise<{ body: string; contentType: string }>;
  /** The journal's records that match. */
  events(q: JournalQuery): EventsAnswer;
  /** This host and its VMs, for the live views. */
  overview(pausesSinceMs?: number): Overview;
  /** The live view's hub (the dashboard's stream). */
  live(): LiveHub;
  /** An operator's command as it comes (status null), and its answer. */
  noteCommand(caller: string, command: string, vm: string | null, status: number | null, error: string | null): void;
}

/** The commands an operator gives through the API, by method and path (for the journal). */
function commandOf(method: string, path: string): { command: string; vm: string | null } | null {
  const m = /^\/v1\/vms\/([^/]+)(?:\/(start|stop|end-qemu|resync))?$/.exec(path);
  if (!m) return null;
  const vm = decodeURIComponent(m[1]!);
  if (method === 'PUT' && !m[2]) return { command: 'define', vm };
  if (method === 'POST' && m[2]) return { command: m[2], vm };
  return null;
}

/** A query parameter as a whole number ≥ 0, or undefined; anything else is refused. */
function whole(v: string | undefined, what: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  if (!/^\d{1,16}$/.test(v)) throw new LockstepError(`${what} must be a whole number, not "${v.slice(0, 40)}"`);
  return Number(v);
}

/** The dashboard's pages may load only what the daemon serves: no other origin, no inline script. */
const DASHBOARD_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

type Env = { Bindings: Partial<HttpBindings>; Variables: { caller: string } };

/**
 * Who calls over TLS: the trusted host whose pinned certificate the
 * connection showed (TLS checked it against the pinned ones), else nobody.
 */
export function tlsCaller(socket: TLSSocket | undefined, view: DaemonView): string | undefined {
  if (!socket?.encrypted || !socket.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  if (!cert?.fingerprint256) return undefined;
  return view.peerByFingerprint(cert.fingerprint256);
}

function errorBody(error: string, hint?: string): ApiError {
  return hint === undefined ? { error } : { error, hint };
}

/** The API of one listener: `local` (the unix socket, for root) or `tls` (trusted hosts only). */
export function apiApp(view: DaemonView, listener: 'local' | 'tls'): Hono<Env> {
  const app = new Hono<Env>();
  app.use('*', async (c, next) => {
    const caller = listener === 'local' ? 'root on this host' : tlsCaller(c.env?.incoming?.socket as TLSSocket | undefined, view);
    if (caller === undefined) return c.json(errorBody('your certificate is not trusted by this host', 'on this host: lockstep host trust --name NAME --api ADDRESS YOUR-host.crt'), 403);
    c.set('caller', caller);
    await next();
  });
  app.use('*', bodyLimit({ maxSize: MAX_BODY_BYTES, onError: (c) => c.json(errorBody(`request body over ${MAX_BODY_BYTES} bytes`), 413) }));
  // Every operator's command goes into the journal with who gave it, before it acts (so that what it causes comes
  // after it), and again if it was refused, with why.
  app.use('*', async (c, next) => {
    const cmd = commandOf(c.req.method, c.req.path);
    if (cmd) view.noteCommand(c.get('caller'), cmd.command, cmd.vm, null, null);
    await next();
    if (!cmd) return;
    let error: string | null = null;
    if (c.res.status >= 400) {
      try {
        error = ((await c.res.clone().json()) as ApiError).error ?? null;
      } catch {
        error = null;
      }
    }
    view.noteCommand(c.get('caller'), cmd.command, cmd.vm, c.res.status, error);
  });
  const v = `/${API_VERSION}`;
  app.get('/metrics', async (c) => {
    const m = await view.metricsText();
    return c.body(m.body, 200, { 'content-type': m.contentType });
  });
  app.get(`${v}/events`, (c) =>
    c.json(
      view.events({
        vm: c.req.query('vm') || undefined,
        sinceMs: whole(c.req.query('sinceMs'), 'sinceMs'),
        afterSeq: whole(c.req.query('afterSeq'), 'afterSeq'),
        limit: whole(c.req.query('limit'), 'limit'),
      }),
    ),
  );
  app.get(`${v}/overview`, (c) => c.json(view.overview(whole(c.req.query('pausesSinceMs'), 'pausesSinceMs'))));
  app.get(`${v}/overview/stream`, (c) => {
    const hub = view.live();
    if (hub.clients >= MAX_WATCHERS) return c.json(errorBody(`no more live views: ${MAX_WATCHERS} are open on this daemon`, 'close a dashboard, or use lockstep status --watch'), 503);
    // Frames are sent by the hub; the stream lives until the watcher goes away or the hub drops it.
    return streamSSE(c, async (s) => {
      let done: () => void = () => {};
      const ended = new Promise<void>((resolve) => (done = resolve));
      const stop = hub.watch((f) => s.writeSSE(f), done);
      s.onAbort(() => {
        stop();
        done();
      });
      await ended;
      stop();
    });
  });
  app.get('/', (c) => c.redirect('/dashboard/'));
  app.get('/dashboard', (c) => c.redirect('/dashboard/'));
  app.get('/dashboard/:file{[a-z0-9.-]*}', (c) => {
    const f = dashboardFile(c.req.param('file') || 'index.html');
    if (!f) return c.json(errorBody(`no such dashboard file: ${c.req.param('file')}`), 404);
    return c.body(f.body, 200, { 'content-type': f.contentType, ...DASHBOARD_HEADERS });
  });
  app.get(`${v}/host`, (c) => c.json(view.hostInfo(c.get('caller'))));
  app.get(`${v}/vms`, (c) => c.json(view.vms()));
  app.get(`${v}/vms/:name`, (c) => {
    const s = view.vm(c.req.param('name'));
    return s ? c.json(s) : c.json(errorBody(`no VM "${c.req.param('name')}" on this host`, 'see lockstep status for the VMs there are'), 404);
  });
  app.put(`${v}/vms/:name`, async (c) => {
    let body: unknown;
    try {
      body = await c.req.json();
    } catch {
      return c.json(errorBody('the body is not JSON'), 400);
    }
    const r = view.define(c.req.param('name'), body);
    return c.json(r, r.outcome === 'created' ? 201 : 200);
  });
  app.post(`${v}/vms/:name/start`, (c) => c.json(view.startVm(c.req.param('name')), 202));
  app.post(`${v}/vms/:name/end-qemu`, async (c) => c.json(await view.endQemu(c.req.param('name'))));
  app.post(`${v}/vms/:name/resync`, (c) => c.json(view.resync(c.req.param('name')), 202));
  app.post(`${v}/vms/:name/stop`, async (c) => c.json(await view.stopVm(c.req.param('name'))));
  app.notFound((c) => c.json(errorBody(`no such API path: ${c.req.method} ${c.req.path}`, `this daemon speaks /${API_VERSION}/...; is the lockstep command of the same version?`), 404));
  app.onError((err, c) => {
    if (err instanceof ApiRefusal) return c.json(errorBody(err.message, err.hint), err.status);
    if (err instanceof LockstepError) return c.json(errorBody(err.message, err.hint), 400);
    return c.json(errorBody(`the daemon failed: ${err.message}`, 'see its log: journalctl -u lockstepd'), 500);
  });
  return app;
}
