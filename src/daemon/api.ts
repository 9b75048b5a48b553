/**
 * The daemon's HTTP API (hono), the same on both listeners: the local unix
 * socket (root on this host) and TLS (trusted hosts, each identified by its
 * pinned certificate). Routing only: what the daemon knows comes from the
 * `DaemonView` it is given, so the routes are tested without sockets.
 */
import type { TLSSocket } from 'node:tls';
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { HttpBindings } from '@hono/node-server';
import { API_VERSION, type ApiError, type HostInfo, type VmStatus } from './api-types.js';
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
}

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
  const v = `/${API_VERSION}`;
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
