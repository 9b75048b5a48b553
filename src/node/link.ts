/**
 * An authenticated message link between lockstep processes (agent ↔ agent,
 * agent ↔ witness): lines over TCP, opened by a mutual HMAC-SHA256 challenge
 * on a shared secret, after which every line is authenticated with a key of
 * that connection alone and parsed with the zod schema of its channel
 * (wire.ts). Whatever arrives from the network is parsed here, at the
 * boundary: anything that does not parse is refused (reported through
 * `onRefuse`, and the connection is closed), never thrown, never emitted.
 *
 * ## Protocol lockstep/3
 *
 * Handshake (each line a JSON object of at most 4 KiB, the whole handshake
 * bounded in time: 1 s from accept on the server, 2 s from connect on the
 * client, by default; a server admits at most MAX_HANDSHAKES_PER_SOURCE
 * handshakes of one source address and MAX_HANDSHAKES in all, see
 * HandshakeAdmission):
 *
 *   server → {"hello":"lockstep/3","nonce":Ns}
 *   client → {"name":C,"nonce":Nc,"proof":HMAC(secret,"client|"+Ns+"|"+Nc+"|"+C)}
 *   server → {"name":S,"proof":HMAC(secret,"server|"+Nc+"|"+Ns+"|"+S)}
 *
 * Nonces are 32 lower-case hex digits (16 random bytes, fresh per connection),
 * names 1-64 characters of [A-Za-z0-9._-], proofs 64 lower-case hex digits
 * (HMAC-SHA256); proofs are compared in constant time. Once both proofs check
 * out, both ends derive the session key
 *
 *   K = HMAC-SHA256(secret, "session|"+Ns+"|"+Nc+"|"+C+"|"+S)
 *
 * and every later line, either way, is a frame:
 *
 *   <mac> <seq> <json>
 *   mac = hex HMAC-SHA256(K, dir+"|"+seq+"|"+json)
 *
 * where dir is "c2s" for the lines the client sends and "s2c" for the server's
 * (a line cannot be reflected back to its sender), and seq counts the frames
 * of that direction: 1, 2, 3… (decimal, no leading zeros). A receiver checks,
 * in this order: the line is at most MAX_LINE_BYTES (wire.ts) bytes, has the
 * format, the MAC (constant time), seq is exactly the next one, the json
 * parses, and the channel's schema accepts it. The first failure is reported
 * with its reason and closes the connection. A frame recorded on one
 * connection is worthless on any other (fresh nonces, so another K) and on
 * its own (seq). Nothing is encrypted: the links carry no secrets, only
 * state that must not be forged.
 *
 * ## API
 *
 *   listenLinks<In, Out>({ name, secret, host, port, inbound, outbound?, onLink, onRefuse?, … }): Promise<net.Server>
 *   connectLink<In, Out>({ name, secret, host, port, inbound, outbound?, onRefuse?, localAddress?, timeoutMs? }): Promise<Link<In, Out>>
 *
 * `inbound` is the schema of what this end receives: a Link emits only
 * messages it accepted. `outbound`, if given, is checked by `send()` before
 * anything leaves (a message the other end would refuse throws here, at the
 * bug, instead of closing the link there) and lets TypeScript infer `Out`.
 * `onRefuse(remote, why, peer?)` is called once for every refused connection
 * (handshake) or message (then with the authenticated peer name); an
 * exception it throws is swallowed. A client's failed handshake rejects with
 * LinkAuthError; failing to connect at all rejects with the socket's error.
 *
 * A Link delivers 'message' and 'close' from the next turn of the event loop
 * after it was handed over (in onLink, or when connectLink resolves): attach
 * listeners right away. A 'message' listener that throws closes the link and
 * its exception is re-thrown outside the link's socket code (uncaught, like
 * any bug); the link itself never throws from a socket event.
 *
 * The pure part (no sockets: handshakeProof, sessionKey, frameMac, signFrame,
 * FrameCodec, the handshake schemas) is exported for tests and simulators.
 */
import net from 'node:net';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import { z } from 'zod';
import { LockstepError, errorMessage } from '../util/errors.js';
import { connectSocket } from '../util/net.js';
import { MAX_LINE_BYTES } from './wire.js';

export const PROTOCOL = 'lockstep/3';
/** The longest handshake line either end accepts. */
export const HANDSHAKE_LINE_BYTES = 4096;
/** Default bound of a handshake, from connect (client). */
export const HANDSHAKE_TIMEOUT_MS = 2000;
/**
 * Default bound of a handshake, from accept (server): the client's one line
 * is due one round trip after our hello. Short, so that a connection that
 * says nothing holds its slot briefly.
 */
export const SERVER_HANDSHAKE_TIMEOUT_MS = 1000;
/** Default bound of the connections a server holds in the handshake at once. */
export const MAX_HANDSHAKES = 64;
/**
 * Default share of one source address: at most this many of its connections
 * in the handshake at once; a newer one drops its oldest.
 */
export const MAX_HANDSHAKES_PER_SOURCE = 8;
/** A peer that leaves more than this unread in our send buffer is cut off. */
export const MAX_SEND_BUFFER_BYTES = 16 * MAX_LINE_BYTES;

/** Who sends a frame: "c2s" the end that connected, "s2c" the end that listened. */
export type Direction = 'c2s' | 's2c';

/** Called for every refused connection or message; `peer` once authenticated. */
export type RefuseHandler = (remote: string, why: string, peer?: string) => void;

// ---- handshake (pure) ----

export const linkNameSchema = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'expected 1-64 characters of A-Z a-z 0-9 . _ -');
const nonceSchema = z.string().regex(/^[0-9a-f]{32}$/, 'expected 32 lower-case hex digits');
const proofSchema = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lower-case hex digits');

/** server → client, first line. `hello` is checked against PROTOCOL after parsing, to say what the server speaks. */
export const helloSchema = z.object({ hello: z.string().max(64), nonce: nonceSchema });
/** client → server. */
export const clientAuthSchema = z.object({ name: linkNameSchema, nonce: nonceSchema, proof: proofSchema });
/** server → client, last handshake line. */
export const serverAuthSchema = z.object({ name: linkNameSchema, proof: proofSchema });

/** A fresh handshake nonce: 16 random bytes, as 32 lower-case hex digits. */
export function newNonce(): string {
  return crypto.randomBytes(16).toString('hex');
}

/**
 * The proof one end sends in the handshake, hex:
 * client: HMAC(secret, "client|"+Ns+"|"+Nc+"|"+C); server: HMAC(secret, "server|"+Nc+"|"+Ns+"|"+S).
 * `name` is the name of the end that proves (C or S).
 */
export function handshakeProof(secret: string, side: 'client' | 'server', serverNonce: string, clientNonce: string, name: string): string {
  const text = side === 'client' ? `client|${serverNonce}|${clientNonce}|${name}` : `server|${clientNonce}|${serverNonce}|${name}`;
  return crypto.createHmac('sha256', secret).update(text).digest('hex');
}

/** The key of one connection's frames: HMAC-SHA256(secret, "session|"+Ns+"|"+Nc+"|"+C+"|"+S), 32 bytes. */
export function sessionKey(secret: string, serverNonce: string, clientNonce: string, clientName: string, serverName: string): Buffer {
  return crypto.createHmac('sha256', secret).update(`session|${serverNonce}|${clientNonce}|${clientName}|${serverName}`).digest();
}

// ---- frames (pure) ----

/** hex HMAC-SHA256(key, dir+"|"+seq+"|"+json). */
export function frameMac(key: Buffer, dir: Direction, seq: number, json: string): string {
  return crypto.createHmac('sha256', key).update(`${dir}|${seq}|${json}`).digest('hex');
}

/** One frame line, without its newline: "<mac> <seq> <json>". `json` is taken as is (it may be anything). */
export function signFrame(key: Buffer, dir: Direction, seq: number, json: string): string {
  return `${frameMac(key, dir, seq, json)} ${seq} ${json}`;
}

const FRAME_HEAD = /^([0-9a-f]{64}) (0|[1-9][0-9]{0,15}) /;

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/** A zod error in one short line, safe to log: "t: invalid discriminator; x: …". */
export function describeIssues(err: z.ZodError): string {
  const parts = err.issues.slice(0, 3).map((i) => {
    const where = i.path.map((p) => clip(String(p), 32)).join('.') || '(root)';
    const what = i.code === 'invalid_union' && 'discriminator' in i ? 'invalid discriminator' : i.message;
    return `${where}: ${what}`;
  });
  if (err.issues.length > 3) parts.push(`${err.issues.length - 3} more`);
  return clip(parts.join('; ').replace(/[\u0000-\u001f\u007f]/g, '?'), 300);
}

function tooLong(bytes?: number): string {
  return `line longer than ${MAX_LINE_BYTES} bytes${bytes === undefined ? '' : ` (${bytes})`}`;
}

export type Decoded<T> = { ok: true; msg: T } | { ok: false; why: string };

/**
 * The frames of one end of one connection, without any I/O. Built from the
 * session key, the direction this end sends in, the schema of what it
 * receives and, optionally, of what it sends.
 *
 * encode(msg) returns the next line to send (no newline) and consumes a seq;
 * it throws LockstepError, consuming nothing, for a message that is not JSON,
 * fails `outbound`, or would make a line over MAX_LINE_BYTES.
 *
 * decode(line) (line without its newline) checks length, format, MAC, seq,
 * JSON and `inbound`, in that order, and returns the parsed message or the
 * reason of the refusal. The expected seq advances with each accepted line.
 * A refusal is final, as on a link: every later decode() is refused too.
 */
export class FrameCodec<In = unknown, Out = unknown> {
  /** The direction of the frames this end receives. */
  readonly inboundDir: Direction;
  private sentSeq = 0;
  private receivedSeq = 0;
  private refusedFor: string | undefined;

  constructor(
    private readonly key: Buffer,
    /** The direction of the frames this end sends. */
    readonly outbound: Direction,
    private readonly inbound: z.ZodType<In>,
    private readonly outboundSchema?: z.ZodType<Out>,
  ) {
    this.inboundDir = outbound === 'c2s' ? 's2c' : 'c2s';
  }

  /** The seq of the last frame encoded (0: none yet). */
  get sent(): number {
    return this.sentSeq;
  }

  /** The seq of the last frame accepted (0: none yet). */
  get received(): number {
    return this.receivedSeq;
  }

  /** Why this codec refused a line, if it did. */
  get refused(): string | undefined {
    return this.refusedFor;
  }

  encode(msg: Out): string {
    if (this.outboundSchema) {
      const r = this.outboundSchema.safeParse(msg);
      if (!r.success) throw new LockstepError(`refusing to send an invalid message: schema: ${describeIssues(r.error)}`);
    }
    let json: string | undefined;
    try {
      json = JSON.stringify(msg);
    } catch (err) {
      throw new LockstepError(`cannot send a message that is not JSON: ${errorMessage(err)}`);
    }
    if (typeof json !== 'string') throw new LockstepError(`cannot send a message that is not JSON (${typeof msg})`);
    const seq = this.sentSeq + 1;
    if (!Number.isSafeInteger(seq)) throw new LockstepError('link sequence numbers exhausted');
    const line = signFrame(this.key, this.outbound, seq, json);
    const bytes = Buffer.byteLength(line, 'utf8');
    if (bytes > MAX_LINE_BYTES) throw new LockstepError(`message too long for a link: ${tooLong(bytes)}`);
    this.sentSeq = seq;
    return line;
  }

  decode(line: string): Decoded<In> {
    if (this.refusedFor !== undefined) return { ok: false, why: `after an earlier refusal (${this.refusedFor})` };
    let r: Decoded<In>;
    try {
      r = this.check(line);
    } catch (err) {
      // Nothing above throws on any input; this is a last line of defence.
      r = { ok: false, why: `cannot decode: ${clip(errorMessage(err), 200)}` };
    }
    if (!r.ok) this.refusedFor = r.why;
    return r;
  }

  private check(line: string): Decoded<In> {
    const bytes = Buffer.byteLength(line, 'utf8');
    if (bytes > MAX_LINE_BYTES) return { ok: false, why: tooLong(bytes) };
    const head = FRAME_HEAD.exec(line);
    const seq = head ? Number(head[2]) : NaN;
    if (!head || !Number.isSafeInteger(seq)) return { ok: false, why: 'bad format (expected "<mac> <seq> <json>")' };
    const json = line.slice(head[0].length);
    if (!safeEqual(head[1]!, frameMac(this.key, this.inboundDir, seq, json))) return { ok: false, why: 'bad MAC' };
    const expected = this.receivedSeq + 1;
    if (seq !== expected) return { ok: false, why: `sequence ${seq}, expected ${expected} (replay or loss)` };
    this.receivedSeq = seq;
    let value: unknown;
    try {
      value = JSON.parse(json);
    } catch {
      return { ok: false, why: 'not JSON' };
    }
    const r = this.inbound.safeParse(value);
    if (!r.success) return { ok: false, why: `schema: ${describeIssues(r.error)}` };
    return { ok: true, msg: r.data };
  }
}

// ---- line splitting ----

const TOO_LONG = Symbol('too long');

/** Splits bytes into lines; holds at most one partial line (checked by the caller's limit) plus one chunk. */
class LineBuffer {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
  }

  /** The next whole line without its "\n", null if there is none yet, TOO_LONG if it is or will be over `max` bytes. */
  shift(max: number): Buffer | null | typeof TOO_LONG {
    const nl = this.buf.indexOf(10);
    if (nl < 0) return this.buf.length > max ? TOO_LONG : null;
    if (nl > max) return TOO_LONG;
    const line = this.buf.subarray(0, nl);
    this.buf = this.buf.subarray(nl + 1);
    return line;
  }
}

// ---- the link ----

function addressOf(socket: net.Socket): string {
  return `${socket.remoteAddress ?? 'unknown'}:${socket.remotePort ?? 0}`;
}

function callRefuse(onRefuse: RefuseHandler | undefined, remote: string, why: string, peer?: string): void {
  try {
    onRefuse?.(remote, why, peer);
  } catch {
    // A failing logger must not break the link.
  }
}

/** Surfaces a user callback's exception outside the link's socket code. */
function rethrowLater(err: unknown): void {
  process.nextTick(() => {
    throw err;
  });
}

interface LinkParts<In, Out> {
  socket: net.Socket;
  /** Bytes received after the handshake, not yet read. */
  lines: LineBuffer;
  codec: FrameCodec<In, Out>;
  peer: string;
  remote: string;
  onRefuse: RefuseHandler | undefined;
}

/**
 * One authenticated connection. Emits 'message' (a validated In) and 'close'
 * (once, with the reason). Made by listenLinks() and connectLink() only.
 */
export class Link<In = unknown, Out = unknown> extends EventEmitter<{ message: [msg: In]; close: [reason: string] }> {
  /** The authenticated name of the other end. */
  readonly peer: string;
  /** The address of the other end, for logs. */
  readonly remote: string;
  private readonly socket: net.Socket;
  private readonly lines: LineBuffer;
  private readonly codec: FrameCodec<In, Out>;
  private readonly onRefuse: RefuseHandler | undefined;
  private closed = false;
  private started = false;
  private reason = '';

  /** @internal */
  constructor(parts: LinkParts<In, Out>) {
    super();
    this.socket = parts.socket;
    this.lines = parts.lines;
    this.codec = parts.codec;
    this.peer = parts.peer;
    this.remote = parts.remote;
    this.onRefuse = parts.onRefuse;
    const s = this.socket;
    s.pause();
    s.on('data', (d: Buffer) => this.onData(d));
    s.on('end', () => this.shut('closed by peer', true));
    s.on('close', () => this.shut('connection closed', true));
    s.on('error', (err: Error) => this.shut(`socket error: ${errorMessage(err)}`, true));
    if (s.destroyed) this.shut('connection lost during the handshake', true);
    setImmediate(() => this.start());
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Why the link closed ('' while open). */
  get closeReason(): string {
    return this.reason;
  }

  /**
   * Sends one message. True if it was queued; false if the link is closed,
   * or was just closed because the peer leaves too much unread. Throws
   * LockstepError, sending nothing, for a message that cannot be sent (not
   * JSON, fails `outbound`, too long).
   */
  send(m: Out): boolean {
    if (this.closed) return false;
    const line = this.codec.encode(m);
    if (this.socket.writableLength + line.length + 1 > MAX_SEND_BUFFER_BYTES) {
      this.shut(`peer does not read: over ${MAX_SEND_BUFFER_BYTES} bytes unsent`, true);
      return false;
    }
    this.socket.write(line + '\n');
    return true;
  }

  /** Closes the link (what was sent is still flushed). Emits 'close' with `reason`, once. */
  close(reason = 'closed locally'): void {
    this.shut(reason, false);
  }

  private start(): void {
    this.started = true;
    if (this.closed) {
      this.emit('close', this.reason);
      return;
    }
    this.drain();
    if (!this.closed) this.socket.resume();
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.lines.push(chunk);
    if (this.started) this.drain();
  }

  private drain(): void {
    while (!this.closed) {
      const line = this.lines.shift(MAX_LINE_BYTES);
      if (line === null) return;
      if (line === TOO_LONG) return this.refuse(tooLong());
      const d = this.codec.decode(line.toString('utf8'));
      if (!d.ok) return this.refuse(d.why);
      try {
        this.emit('message', d.msg);
      } catch (err) {
        this.shut(`a 'message' listener threw: ${clip(errorMessage(err), 200)}`, true);
        rethrowLater(err);
      }
    }
  }

  private refuse(why: string): void {
    callRefuse(this.onRefuse, this.remote, why, this.peer);
    this.shut(`refused: ${why}`, true);
  }

  /** `now`: drop what is unsent (refusals, errors); otherwise flush, then close. */
  private shut(reason: string, now: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.reason = reason;
    if (now) this.socket.destroy();
    else {
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    }
    if (this.started) process.nextTick(() => this.emit('close', reason));
  }
}

// ---- handshake over a socket ----

class HandshakeFailure extends Error {}

/**
 * Feeds the handshake lines of `socket` to `step` until it returns a value
 * (done) or throws (failed), bounded by `timeoutMs` and HANDSHAKE_LINE_BYTES.
 * Resolves with the value and the bytes read past the last handshake line;
 * the socket is left paused.
 */
function handshake<R>(socket: net.Socket, timeoutMs: number, step: (line: string) => R | undefined): Promise<{ value: R; lines: LineBuffer }> {
  return new Promise((resolve, reject) => {
    const lines = new LineBuffer();
    let over = false;
    const finish = () => {
      over = true;
      clearTimeout(timer);
      socket.pause();
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
    };
    const fail = (why: string | Error) => {
      if (over) return;
      finish();
      reject(typeof why === 'string' ? new HandshakeFailure(why) : why);
    };
    const onData = (chunk: Buffer) => {
      if (over) return;
      lines.push(chunk);
      for (;;) {
        const line = lines.shift(HANDSHAKE_LINE_BYTES);
        if (line === null) return;
        if (line === TOO_LONG) return fail(`handshake: line longer than ${HANDSHAKE_LINE_BYTES} bytes`);
        let r: R | undefined;
        try {
          r = step(line.toString('utf8'));
        } catch (err) {
          return fail(err instanceof Error ? err : new HandshakeFailure(String(err)));
        }
        if (r !== undefined) {
          finish();
          resolve({ value: r, lines });
          return;
        }
      }
    };
    const onEnd = () => fail('handshake: connection closed');
    const onError = (err: Error) => fail(`handshake: socket error: ${errorMessage(err)}`);
    const timer = setTimeout(() => fail(`handshake timed out after ${timeoutMs} ms`), timeoutMs);
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
    if (socket.destroyed) fail('handshake: connection closed');
    else socket.resume();
  });
}

function parseHandshakeLine<T>(line: string, schema: z.ZodType<T>): T {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw new HandshakeFailure('handshake: not JSON');
  }
  const r = schema.safeParse(v);
  if (!r.success) throw new HandshakeFailure(`handshake: schema: ${describeIssues(r.error)}`);
  return r.data;
}

function checkName(name: string): void {
  if (!linkNameSchema.safeParse(name).success) throw new LockstepError(`"${name}" cannot name a link end: expected 1-64 characters of A-Z a-z 0-9 . _ -`);
}

function checkOwn(name: string, secret: string | undefined): void {
  checkName(name);
  if (!secret) throw new LockstepError('a link needs a shared secret');
}

// ---- server ----

export interface LinkServerOptions<In, Out> {
  /** Our name, proven to clients. */
  name: string;
  /** The secret every client shares with us (one of secret and secretFor). */
  secret?: string;
  /**
   * The secret a client of this name must prove (and the server's proof and
   * the session key then use), instead of `secret`; undefined refuses the
   * name. For a server whose clients do not all share one secret.
   */
  secretFor?: (clientName: string) => string | undefined;
  host: string;
  port: number;
  /** The schema of the messages clients send us. */
  inbound: z.ZodType<In>;
  /** The schema of the messages we send, checked by send(). */
  outbound?: z.ZodType<Out>;
  /** Called for each authenticated link. */
  onLink: (link: Link<In, Out>) => void;
  /** Called for each refused connection or message, with the reason. */
  onRefuse?: RefuseHandler;
  /** Default SERVER_HANDSHAKE_TIMEOUT_MS. */
  handshakeTimeoutMs?: number;
  /** Default MAX_HANDSHAKES. */
  maxHandshakes?: number;
  /** Default MAX_HANDSHAKES_PER_SOURCE (at most maxHandshakes). */
  maxHandshakesPerSource?: number;
  /**
   * Whether a connection from this address may begin a handshake: undefined
   * admits it, a string refuses it (the reason, logged), before anything is
   * sent or a slot taken. For servers whose clients come from known
   * addresses only (the heartbeat sessions: the trusted peers').
   */
  admit?: (address: string) => string | undefined;
}

/** An address as the kernel gives it, IPv4 in IPv6 ("::ffff:10.0.0.1") as IPv4. */
export function sourceAddress(socket: net.Socket): string {
  const a = socket.remoteAddress ?? 'unknown';
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice('::ffff:'.length) : a;
}

/** A connection in the handshake, as admission sees it. */
interface PendingHandshake {
  source: string;
  /** Accept order: smaller is older. */
  seq: number;
  /** Ends its handshake now, with this reason. */
  drop: (why: string) => void;
}

/**
 * Which handshakes a server holds: at most `perSource` per source address
 * (a newer connection of that source drops its oldest) and `total` in all
 * (a newer connection drops the oldest of the source that holds the most).
 * So connections from one address, however many, never keep another
 * address's out: a peer's new connection always gets a slot, taken from
 * whoever holds the most. Pure bookkeeping; the drop is the caller's.
 */
export class HandshakeAdmission {
  private readonly bySource = new Map<string, PendingHandshake[]>();
  private count = 0;
  private seq = 0;

  constructor(
    private readonly total: number,
    private readonly perSource: number,
  ) {
    if (!(total >= 1) || !(perSource >= 1)) throw new RangeError('handshake admission needs room for one connection at least');
  }

  get size(): number {
    return this.count;
  }

  /** How many of `source`'s connections are in the handshake. */
  of(source: string): number {
    return this.bySource.get(source)?.length ?? 0;
  }

  /** Admits a new connection from `source`, dropping who must make room. Returns its release(). */
  admit(source: string, drop: (why: string) => void): () => void {
    const mine = this.bySource.get(source) ?? [];
    if (mine.length >= this.perSource) this.evict(source, `dropped: a newer connection from ${source}, which may hold ${this.perSource} in the handshake`);
    if (this.count >= this.total) {
      let heaviest: string | undefined;
      for (const [src, list] of this.bySource) {
        const best = heaviest === undefined ? undefined : this.bySource.get(heaviest)!;
        if (!best || list.length > best.length || (list.length === best.length && list[0]!.seq < best[0]!.seq)) heaviest = src;
      }
      if (heaviest !== undefined) this.evict(heaviest, `dropped: ${this.total} connections in the handshake, ${heaviest} holding the most`);
    }
    const p: PendingHandshake = { source, seq: ++this.seq, drop };
    const list = this.bySource.get(source) ?? [];
    list.push(p);
    this.bySource.set(source, list);
    this.count++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.remove(p);
    };
  }

  private evict(source: string, why: string): void {
    const oldest = this.bySource.get(source)?.[0];
    if (!oldest) return;
    this.remove(oldest);
    oldest.drop(why);
  }

  private remove(p: PendingHandshake): void {
    const list = this.bySource.get(p.source);
    const i = list ? list.indexOf(p) : -1;
    if (!list || i < 0) return;
    list.splice(i, 1);
    this.count--;
    if (!list.length) this.bySource.delete(p.source);
  }
}

/**
 * Listens for authenticated links. Resolves once listening; the server's
 * later errors (e.g. out of file descriptors on accept) go to onRefuse.
 */
export async function listenLinks<In, Out = unknown>(o: LinkServerOptions<In, Out>): Promise<net.Server> {
  if (o.secretFor) checkName(o.name);
  else checkOwn(o.name, o.secret);
  const timeoutMs = o.handshakeTimeoutMs ?? SERVER_HANDSHAKE_TIMEOUT_MS;
  const maxHandshakes = o.maxHandshakes ?? MAX_HANDSHAKES;
  const admission = new HandshakeAdmission(maxHandshakes, Math.min(maxHandshakes, o.maxHandshakesPerSource ?? MAX_HANDSHAKES_PER_SOURCE));

  const accept = async (socket: net.Socket): Promise<void> => {
    const remote = addressOf(socket);
    socket.on('error', () => {}); // reported by whoever reads the socket; never unhandled
    const source = sourceAddress(socket);
    let refusal: string | undefined;
    try {
      refusal = o.admit?.(source);
    } catch (err) {
      refusal = `cannot tell whether ${source} may connect: ${errorMessage(err)}`;
    }
    if (refusal !== undefined) {
      callRefuse(o.onRefuse, remote, refusal);
      socket.destroy();
      return;
    }
    let droppedFor: string | undefined;
    const release = admission.admit(source, (why) => {
      droppedFor = why;
      socket.destroy();
    });
    let done: { value: z.infer<typeof clientAuthSchema> & { key: Buffer }; lines: LineBuffer };
    try {
      socket.setNoDelay(true);
      const ns = newNonce();
      socket.write(JSON.stringify({ hello: PROTOCOL, nonce: ns }) + '\n');
      done = await handshake(socket, timeoutMs, (line) => {
        const m = parseHandshakeLine(line, clientAuthSchema);
        const secret = o.secretFor ? o.secretFor(m.name) : o.secret;
        if (!secret) throw new HandshakeFailure(`no key for a client named "${m.name}"`);
        if (!safeEqual(m.proof, handshakeProof(secret, 'client', ns, m.nonce, m.name))) {
          throw new HandshakeFailure(`authentication failed (claimed name "${m.name}")`);
        }
        socket.write(JSON.stringify({ name: o.name, proof: handshakeProof(secret, 'server', ns, m.nonce, o.name) }) + '\n');
        return { ...m, key: sessionKey(secret, ns, m.nonce, m.name, o.name) };
      });
    } catch (err) {
      callRefuse(o.onRefuse, remote, droppedFor ?? errorMessage(err));
      socket.destroy();
      return;
    } finally {
      release();
    }
    const link = new Link<In, Out>({
      socket,
      lines: done.lines,
      codec: new FrameCodec<In, Out>(done.value.key, 's2c', o.inbound, o.outbound),
      peer: done.value.name,
      remote,
      onRefuse: o.onRefuse,
    });
    try {
      o.onLink(link);
    } catch (err) {
      link.close(`onLink threw: ${clip(errorMessage(err), 200)}`);
      rethrowLater(err);
    }
  };

  const server = net.createServer((socket) => {
    const remote = addressOf(socket);
    accept(socket).catch((err: unknown) => {
      // Not expected: accept() handles its failures. Keep the process alive, say so.
      socket.destroy();
      callRefuse(o.onRefuse, remote, `internal error: ${errorMessage(err)}`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: o.host, port: o.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => callRefuse(o.onRefuse, `${o.host}:${o.port}`, `server error: ${errorMessage(err)}`));
  return server;
}

// ---- client ----

export interface ConnectLinkOptions<In, Out> {
  /** Our name, proven to the server. */
  name: string;
  secret: string;
  host: string;
  port: number;
  /** The schema of the messages the server sends us. */
  inbound: z.ZodType<In>;
  /** The schema of the messages we send, checked by send(). */
  outbound?: z.ZodType<Out>;
  /** Called for each refused message on the link, with the reason. */
  onRefuse?: RefuseHandler;
  /** Bind the local end to this address (choose the path/NIC). */
  localAddress?: string;
  /** Bounds the connect, then the handshake, each. Default HANDSHAKE_TIMEOUT_MS. */
  timeoutMs?: number;
}

/** A client's handshake failed: the other end is not a lockstep/3 server with our secret, or did not finish. */
export class LinkAuthError extends LockstepError {
  constructor(what: string, hint = 'the agents and the witness must share the same agents.secret') {
    super(what, { hint });
    this.name = 'LinkAuthError';
  }
}

/**
 * Opens an authenticated link. Rejects with LinkAuthError if the handshake
 * fails (the other end cannot prove the secret, refuses our proof, does not
 * speak PROTOCOL, or takes too long), with the socket's error if it cannot
 * connect.
 */
export async function connectLink<In, Out = unknown>(o: ConnectLinkOptions<In, Out>): Promise<Link<In, Out>> {
  checkOwn(o.name, o.secret);
  const timeoutMs = o.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  const at = `${o.host}:${o.port}`;
  const socket = await connectSocket({ host: o.host, port: o.port, localAddress: o.localAddress }, timeoutMs, () => new Error(`connect to ${at} timed out`));
  socket.on('error', () => {}); // reported by whoever reads the socket; never unhandled
  socket.setNoDelay(true);
  const remote = addressOf(socket);
  const cn = newNonce();
  let sn: string | undefined;
  let phase: 'hello' | 'proof' = 'hello';
  try {
    const done = await handshake(socket, timeoutMs, (line) => {
      if (sn === undefined) {
        const hello = parseHandshakeLine(line, helloSchema);
        if (hello.hello !== PROTOCOL) {
          throw new LinkAuthError(`${at} speaks ${clip(JSON.stringify(hello.hello), 70)}, we speak ${PROTOCOL}`, 'run the same lockstep version on both nodes and the witness');
        }
        sn = hello.nonce;
        phase = 'proof';
        socket.write(JSON.stringify({ name: o.name, nonce: cn, proof: handshakeProof(o.secret, 'client', sn, cn, o.name) }) + '\n');
        return undefined;
      }
      const r = parseHandshakeLine(line, serverAuthSchema);
      if (!safeEqual(r.proof, handshakeProof(o.secret, 'server', sn, cn, r.name))) {
        throw new LinkAuthError(`${at} could not prove the shared secret (claimed name "${r.name}")`);
      }
      return { name: r.name, key: sessionKey(o.secret, sn, cn, o.name, r.name) };
    });
    return new Link<In, Out>({
      socket,
      lines: done.lines,
      codec: new FrameCodec<In, Out>(done.value.key, 'c2s', o.inbound, o.outbound),
      peer: done.value.name,
      remote,
      onRefuse: o.onRefuse,
    });
  } catch (err) {
    socket.destroy();
    if (err instanceof LinkAuthError) throw err;
    const why = errorMessage(err);
    if (phase === 'hello') throw new LinkAuthError(`${at} is not a lockstep agent or witness (${why})`, 'check the address and port, and that the agent or witness there runs');
    throw new LinkAuthError(`${at} refused our proof of the shared secret, or did not answer it (${why})`);
  }
}
