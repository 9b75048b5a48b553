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
import { API_VERSION, type ApiError, type HostInfo } from './api-types.js';
import { LockstepError } from '../util/errors.js';

/** A request body larger than this is refused (VM definitions are a few KiB). */
export const MAX_BODY_BYTES = 256 * 1024;

export interface DaemonView {
  hostInfo(caller: string): HostInfo;
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
  app.get(`/${API_VERSION}/host`, (c) => c.json(view.hostInfo(c.get('caller'))));
  app.notFound((c) => c.json(errorBody(`no such API path: ${c.req.method} ${c.req.path}`, `this daemon speaks /${API_VERSION}/...; is the lockstep command of the same version?`), 404));
  app.onError((err, c) =>
    err instanceof LockstepError ? c.json(errorBody(err.message, err.hint), 400) : c.json(errorBody(`the daemon failed: ${err.message}`, 'see its log: journalctl -u lockstepd'), 500),
  );
  return app;
}
