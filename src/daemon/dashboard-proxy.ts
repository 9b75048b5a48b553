/**
 * `lockstep dashboard`: a port on 127.0.0.1 for the operator's browser, in
 * front of a daemon the browser could not reach itself (the local socket is
 * root's; a remote daemon wants a pinned client certificate). Read-only: it
 * passes GETs of the dashboard's files and of the API's reading routes, and
 * nothing else. Only the browser that opened the printed URL gets in: the
 * URL's one-time token becomes an HttpOnly cookie, and a request without it
 * (another user of this machine, a page of another site) is refused, as is
 * any Host but this port's own (DNS rebinding).
 */
import http from 'node:http';
import crypto from 'node:crypto';
import type net from 'node:net';
import type { ApiClient } from './client.js';
import { LockstepError, errorMessage } from '../util/errors.js';

/** Connections at once (a browser opens a few; the live stream holds one). */
const MAX_CONNECTIONS = 32;

/** What may pass: the dashboard's files, and the API's reading routes. */
export function passes(method: string, path: string): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  const p = path.split('?')[0]!;
  return /^\/dashboard\/?[a-z0-9.-]*$/.test(p) || p === '/metrics' || /^\/v1\/(host|vms|vms\/[a-z0-9-]+|events|overview|overview\/stream)$/.test(p);
}

export interface DashboardProxy {
  /** What the operator opens (it carries the token). */
  url: string;
  port: number;
  close(): Promise<void>;
}

function refuse(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' }).end(`${text}\n`);
}

/** The cookie's name: one per port (a browser sends a host's cookies to every port of it). */
const cookieName = (port: number) => `lockstep_dashboard_${port}`;

function cookieOf(req: http.IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return v.join('=');
  }
  return undefined;
}

/** Opens the port (0: any free one) and passes what may pass to `upstream`, until close(). */
export async function startDashboardProxy(upstream: ApiClient, o: { port: number; token?: string }): Promise<DashboardProxy> {
  const token = o.token ?? crypto.randomBytes(24).toString('base64url');
  const expected = Buffer.from(token);
  const tokenOk = (t: string | undefined) => t !== undefined && t.length === token.length && crypto.timingSafeEqual(Buffer.from(t), expected);
  const aborts = new Set<() => void>();
  let port = 0;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const host = req.headers.host ?? '';
    if (host !== `127.0.0.1:${port}` && host !== `localhost:${port}`) return refuse(res, 403, `this port answers to 127.0.0.1:${port} only`);
    // The printed URL: its token becomes the browser's cookie, then the dashboard.
    if (url.pathname === '/' && url.searchParams.has('token')) {
      if (!tokenOk(url.searchParams.get('token') ?? undefined)) return refuse(res, 403, 'wrong token: open the URL lockstep dashboard printed');
      res.writeHead(303, { location: '/dashboard/', 'set-cookie': `${cookieName(port)}=${token}; HttpOnly; SameSite=Strict; Path=/`, 'cache-control': 'no-store' }).end();
      return;
    }
    if (!tokenOk(cookieOf(req, cookieName(port)))) return refuse(res, 403, 'open the URL lockstep dashboard printed (it carries this session\'s token)');
    if (url.pathname === '/') {
      res.writeHead(303, { location: '/dashboard/' }).end();
      return;
    }
    if (!passes(req.method ?? '', url.pathname)) return refuse(res, 405, 'read-only: the dashboard and the API\'s reading routes only (lockstep commands change things)');
    upstream.stream(url.pathname + url.search, { accept: req.headers.accept ?? '*/*' }).then(
      ({ res: up, abort }) => {
        aborts.add(abort);
        const headers: http.OutgoingHttpHeaders = {};
        for (const h of ['content-type', 'cache-control', 'content-security-policy', 'x-content-type-options', 'referrer-policy', 'location']) if (up.headers[h] !== undefined) headers[h] = up.headers[h];
        res.writeHead(up.statusCode ?? 502, headers);
        up.pipe(res);
        const end = () => {
          abort();
          aborts.delete(abort);
        };
        res.on('close', end);
        up.on('error', end);
      },
      (err: unknown) => refuse(res, 502, `${errorMessage(err)}`),
    );
  });
  server.maxConnections = MAX_CONNECTIONS;
  server.headersTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new LockstepError(`cannot open 127.0.0.1:${o.port} for the dashboard: ${err.code === 'EADDRINUSE' ? 'the port is in use' : err.message}`, { hint: 'choose another with --port PORT (0: any free port)' })),
    );
    server.listen({ host: '127.0.0.1', port: o.port }, () => resolve());
  });
  port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/?token=${token}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const a of aborts) a();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
