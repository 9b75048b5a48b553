/**
 * An authenticated message link between lockstep processes (agent ↔ agent,
 * agent ↔ witness): JSON lines over TCP, opened by a mutual HMAC-SHA256
 * challenge on a shared secret. Both ends prove they know the secret without
 * sending it; a peer that fails is logged and dropped, with no other effect.
 *
 *   server → {"hello":"lockstep/1","nonce":Ns}
 *   client → {"name":C,"nonce":Nc,"proof":HMAC(secret,"client|"+Ns+"|"+Nc+"|"+C)}
 *   server → {"name":S,"proof":HMAC(secret,"server|"+Nc+"|"+Ns+"|"+S)}
 *   then: one JSON object per line, either way.
 *
 * The messages after the handshake are not encrypted or individually signed:
 * the links are meant for a private network between the nodes.
 */
import net from 'node:net';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import { LockstepError } from '../util/errors.js';
import { connectSocket } from '../util/net.js';

export const PROTOCOL = 'lockstep/1';

function hmac(secret: string, text: string): string {
  return crypto.createHmac('sha256', secret).update(text).digest('hex');
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

export type Message = Record<string, unknown> & { t: string };

/** One authenticated connection. Emits 'message' and 'close'. */
export class Link extends EventEmitter<{ message: [Message]; close: [] }> {
  private buf = '';
  private closed = false;
  constructor(
    private readonly socket: net.Socket,
    /** The authenticated name of the other end. */
    readonly peer: string,
  ) {
    super();
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d.toString('utf8')));
    socket.on('close', () => this.onClose());
    socket.on('error', () => this.onClose());
    socket.resume();
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    if (this.buf.length > 1 << 20) {
      this.close();
      return;
    }
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + 1);
      try {
        const m = JSON.parse(line) as Message;
        if (m && typeof m.t === 'string') this.emit('message', m);
      } catch {
        this.close();
        return;
      }
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.emit('close');
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  send(m: Message): boolean {
    if (this.closed) return false;
    return this.socket.write(JSON.stringify(m) + '\n');
  }

  close(): void {
    this.onClose();
  }

  /** The address of the other end, for logs. */
  get remote(): string {
    return `${this.socket.remoteAddress}:${this.socket.remotePort}`;
  }
}

/** Reads exactly one JSON line from a socket before the link is set up. */
function readLine(socket: net.Socket, timeoutMs: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => done(new Error('handshake timed out')), timeoutMs);
    const onData = (d: Buffer) => {
      buf += d.toString('utf8');
      const i = buf.indexOf('\n');
      if (i >= 0) {
        const rest = buf.slice(i + 1);
        try {
          const obj = JSON.parse(buf.slice(0, i)) as Record<string, unknown>;
          done(undefined, obj);
          if (rest) socket.unshift(Buffer.from(rest));
        } catch {
          done(new Error('handshake: not JSON'));
        }
      } else if (buf.length > 4096) done(new Error('handshake: line too long'));
    };
    const onClose = () => done(new Error('handshake: connection closed'));
    const done = (err?: Error, v?: Record<string, unknown>) => {
      clearTimeout(t);
      // Hold further bytes until the next reader is attached.
      socket.pause();
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onClose);
      if (err) reject(err);
      else resolve(v!);
    };
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('error', onClose);
    socket.resume();
  });
}

export interface LinkServerOptions {
  name: string;
  secret: string;
  host: string;
  port: number;
  /** Called for each authenticated link. */
  onLink: (link: Link) => void;
  /** Called for each rejected connection, with the reason. */
  onReject?: (remote: string, reason: string) => void;
  handshakeTimeoutMs?: number;
}

/** Listens for authenticated links. */
export async function listenLinks(o: LinkServerOptions): Promise<net.Server> {
  const server = net.createServer((socket) => {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    const nonce = crypto.randomBytes(16).toString('hex');
    socket.write(JSON.stringify({ hello: PROTOCOL, nonce }) + '\n');
    readLine(socket, o.handshakeTimeoutMs ?? 2000).then(
      (m) => {
        const name = typeof m.name === 'string' ? m.name : '';
        const cn = typeof m.nonce === 'string' ? m.nonce : '';
        const proof = typeof m.proof === 'string' ? m.proof : '';
        if (!name || cn.length < 16 || !safeEqual(proof, hmac(o.secret, `client|${nonce}|${cn}|${name}`))) {
          o.onReject?.(remote, `authentication failed${name ? ` (claimed name "${name}")` : ''}`);
          socket.destroy();
          return;
        }
        socket.write(JSON.stringify({ name: o.name, proof: hmac(o.secret, `server|${cn}|${nonce}|${o.name}`) }) + '\n');
        o.onLink(new Link(socket, name));
      },
      (err: Error) => {
        o.onReject?.(remote, err.message);
        socket.destroy();
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: o.host, port: o.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

export interface ConnectLinkOptions {
  name: string;
  secret: string;
  host: string;
  port: number;
  /** Bind the local end to this address (choose the path/NIC). */
  localAddress?: string;
  timeoutMs?: number;
}

export class LinkAuthError extends LockstepError {
  constructor(what: string) {
    super(what, { hint: 'the agents and the witness must share the same agents.secret' });
    this.name = 'LinkAuthError';
  }
}

/** Opens an authenticated link; rejects if the other end cannot prove the secret. */
export async function connectLink(o: ConnectLinkOptions): Promise<Link> {
  const timeoutMs = o.timeoutMs ?? 2000;
  const socket = await connectSocket({ host: o.host, port: o.port, localAddress: o.localAddress }, timeoutMs, () => new Error(`connect to ${o.host}:${o.port} timed out`));
  try {
    const hello = await readLine(socket, timeoutMs);
    const sn = typeof hello.nonce === 'string' ? hello.nonce : '';
    if (hello.hello !== PROTOCOL || sn.length < 16) throw new LinkAuthError(`${o.host}:${o.port} is not a lockstep agent or witness`);
    const cn = crypto.randomBytes(16).toString('hex');
    socket.write(JSON.stringify({ name: o.name, nonce: cn, proof: hmac(o.secret, `client|${sn}|${cn}|${o.name}`) }) + '\n');
    const reply = await readLine(socket, timeoutMs).catch(() => {
      throw new LinkAuthError(`${o.host}:${o.port} refused our proof of the shared secret`);
    });
    const name = typeof reply.name === 'string' ? reply.name : '';
    if (!name || !safeEqual(String(reply.proof ?? ''), hmac(o.secret, `server|${cn}|${sn}|${name}`))) {
      throw new LinkAuthError(`${o.host}:${o.port} could not prove the shared secret`);
    }
    return new Link(socket, name);
  } catch (err) {
    socket.destroy();
    throw err;
  }
}
