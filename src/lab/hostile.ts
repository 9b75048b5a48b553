/**
 * A hostile peer for the lab (node hostile.js HOST PORT SECRET NAME): on one
 * of lockstep's listening ports (an agent's, the witness's) it tries, each on
 * a connection of its own, what an attacker or a broken peer might send:
 * JSON that is not a handshake, oversized lines, binary junk, HTTP, a proof
 * made with the wrong secret, and, with the right secret (a peer that is
 * authenticated but broken), lines with a bad MAC, a replayed line and a
 * message outside the protocol; then more connections at once than the
 * handshake admits. Prints one JSON line per attempt: what it sent and how
 * the other end answered (it must close the connection, and send nothing but
 * its hello).
 *
 * `node hostile.js fill HOST PORT COUNT DURATION_MS [LOCAL_ADDRESS]`: fills
 * every handshake slot it can instead: COUNT silent connections kept open,
 * each reopened as soon as the other end closes it, for DURATION_MS; then
 * prints one JSON line: how many it opened, how many the other end closed,
 * how many it held open at most and at the end.
 */
import net from 'node:net';
import crypto from 'node:crypto';
import { PROTOCOL, MAX_HANDSHAKES, handshakeProof, sessionKey, signFrame } from '../node/link.js';
import { MAX_LINE_BYTES } from '../node/wire.js';

const fillMode = process.argv[2] === 'fill';
const [host = '127.0.0.1', portText = '7800', secret = '', name = 'mallory'] = process.argv.slice(fillMode ? 3 : 2);
const port = Number(portText);

interface Outcome {
  attempt: string;
  /** The other end closed the connection (what it must do). */
  closed: boolean;
  /** Lines it sent besides its hello. */
  extra: string[];
  ms: number;
}

function connect(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ host, port });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Reads lines until the peer closes or `ms` pass. */
function collect(s: net.Socket, ms: number): Promise<{ lines: string[]; closed: boolean }> {
  return new Promise((resolve) => {
    let buf = '';
    const done = (closed: boolean) => {
      clearTimeout(t);
      s.removeAllListeners('data');
      resolve({ lines: buf.split('\n').filter(Boolean), closed });
    };
    const t = setTimeout(() => done(false), ms);
    s.on('data', (d: Buffer) => (buf += d.toString('latin1')));
    s.resume(); // readLine paused it to keep what followed its line
    s.once('close', () => done(true));
    s.once('error', () => {});
  });
}

/**
 * Reads one line, or what came within `ms`. What came after the line is put
 * back, into the paused socket for the next reader (collect and readLine
 * resume it), once this reader has stopped listening: put back while it
 * still listened, it came straight back to it, which put it back again,
 * growing without end (seen as "Invalid string length" when the hello and
 * the next line came in one chunk). When another reader (collect) listens
 * too, it has had all of it already: nothing is put back.
 */
function readLine(s: net.Socket, ms: number): Promise<string> {
  return new Promise((resolve) => {
    let b = '';
    const t = setTimeout(() => done(b, ''), ms);
    const done = (line: string, rest: string) => {
      clearTimeout(t);
      s.off('data', on);
      // Another reader (collect) has had all of it already; with none, the paused socket keeps the rest.
      if (s.listenerCount('data') === 0) {
        s.pause();
        if (rest) s.unshift(Buffer.from(rest, 'latin1'));
      }
      resolve(line);
    };
    const on = (d: Buffer) => {
      b += d.toString('latin1');
      const i = b.indexOf('\n');
      if (i >= 0) done(b.slice(0, i), b.slice(i + 1));
    };
    s.on('data', on);
    s.resume();
  });
}

async function attempt(label: string, send: (s: net.Socket, hello: { nonce: string }) => void | Promise<void>): Promise<Outcome> {
  const t0 = performance.now();
  const s = await connect();
  const first = await readLine(s, 2000);
  let nonce = '';
  try {
    nonce = String((JSON.parse(first) as { nonce?: string }).nonce ?? '');
  } catch {
    /* no hello */
  }
  const reading = collect(s, 5000);
  await send(s, { nonce });
  const r = await reading;
  s.destroy();
  return { attempt: label, closed: r.closed, extra: r.lines, ms: Math.round(performance.now() - t0) };
}

const write = (text: string | Buffer) => (s: net.Socket) => void s.write(text);

/** A handshake with the right secret; returns the session key, after reading the server's proof. */
async function handshake(s: net.Socket, serverNonce: string): Promise<{ key: Buffer; server: string }> {
  const cn = crypto.randomBytes(16).toString('hex');
  s.write(JSON.stringify({ name, nonce: cn, proof: handshakeProof(secret, 'client', serverNonce, cn, name) }) + '\n');
  const line = await readLine(s, 5000);
  const server = String((JSON.parse(line) as { name?: string }).name ?? '');
  return { key: sessionKey(secret, serverNonce, cn, name, server), server };
}

async function main(): Promise<void> {
  const out: Outcome[] = [];
  const junk = crypto.createHash('sha512').update('lockstep junk').digest();
  out.push(await attempt('null', write('null\n')));
  out.push(await attempt('[]', write('[]\n')));
  out.push(await attempt('{}', write('{}\n')));
  out.push(await attempt('{"name":null}', write('{"name":null}\n')));
  out.push(await attempt('100 KB line, no newline', write('A'.repeat(100_000))));
  out.push(await attempt('oversized line', write('{"t":"hb","x":"' + 'x'.repeat(MAX_LINE_BYTES) + '"}\n')));
  out.push(await attempt('binary junk', write(Buffer.concat(Array.from({ length: 64 }, () => junk)))));
  out.push(await attempt('HTTP request', write('GET / HTTP/1.0\r\n\r\n')));
  out.push(
    await attempt('handshake with a wrong secret', (s, h) => {
      const cn = crypto.randomBytes(16).toString('hex');
      s.write(JSON.stringify({ name, nonce: cn, proof: handshakeProof('not the secret, not at all', 'client', h.nonce, cn, name) }) + '\n');
    }),
  );
  out.push(await attempt(`an old protocol's hello answer (${PROTOCOL} expected)`, write('{"name":"a","nonce":"00","proof":"00"}\n')));
  if (secret) {
    out.push(
      await attempt('authenticated, then a line with a bad MAC', async (s, h) => {
        await handshake(s, h.nonce);
        s.write(`${'0'.repeat(64)} 1 {"t":"hback","seq":1}\n`);
      }),
    );
    out.push(
      await attempt('authenticated, then a replayed line', async (s, h) => {
        const { key } = await handshake(s, h.nonce);
        const line = signFrame(key, 'c2s', 1, JSON.stringify({ t: 'release', id: 'x1', lease: 'web' }));
        s.write(line + '\n' + line + '\n');
      }),
    );
    out.push(
      await attempt('authenticated, then a message outside the protocol', async (s, h) => {
        const { key } = await handshake(s, h.nonce);
        s.write(signFrame(key, 'c2s', 1, JSON.stringify({ t: 'lease', re: 'x', granted: true, holder: name, newest: null, injected: true, role: 'primary' })) + '\n');
        s.write(signFrame(key, 'c2s', 2, JSON.stringify({ t: 'hb', seq: -1, boot: '__proto__' })) + '\n');
      }),
    );
  }
  // More connections in the handshake at once than the server admits: the extra ones are refused at once.
  const crowd = await Promise.all(Array.from({ length: MAX_HANDSHAKES + 16 }, () => connect().catch(() => undefined)));
  const answers = await Promise.all(crowd.map((s) => (s ? collect(s, 3000) : Promise.resolve({ lines: [], closed: true }))));
  for (const s of crowd) s?.destroy();
  out.push({ attempt: `${crowd.length} connections at once, silent`, closed: answers.every((a) => a.closed), extra: [], ms: 0 });
  for (const o of out) process.stdout.write(JSON.stringify(o) + '\n');
}

/** Fill mode: `count` silent connections held open, each reopened at once when closed, for `ms`. */
async function fill(count: number, ms: number, localAddress: string | undefined): Promise<void> {
  const st = { opened: 0, closedByPeer: 0, failed: 0, maxOpen: 0, open: 0 };
  const until = performance.now() + ms;
  const sockets = new Set<net.Socket>();
  const one = (): void => {
    if (performance.now() >= until) return;
    const s = net.createConnection({ host, port, ...(localAddress ? { localAddress } : {}) });
    sockets.add(s);
    let connected = false;
    s.on('connect', () => {
      connected = true;
      st.opened++;
      st.open++;
      st.maxOpen = Math.max(st.maxOpen, st.open);
    });
    s.on('data', () => {}); // the hello: read, never answered
    s.on('error', () => {});
    s.on('close', () => {
      sockets.delete(s);
      if (connected) {
        st.open--;
        if (performance.now() < until) st.closedByPeer++;
      } else st.failed++;
      // Reopened as soon as closed (after a failed connect, a moment later: the cable may be cut).
      setTimeout(one, connected ? 0 : 50);
    });
  };
  for (let i = 0; i < count; i++) one();
  await new Promise((r) => setTimeout(r, ms));
  const atEnd = st.open;
  for (const s of sockets) s.destroy();
  process.stdout.write(JSON.stringify({ attempt: `fill ${host}:${port} with ${count} silent connections for ${ms} ms`, opened: st.opened, closedByPeer: st.closedByPeer, failed: st.failed, maxOpen: st.maxOpen, openAtEnd: atEnd }) + '\n');
}

if (fillMode) {
  fill(Number(process.argv[5] ?? 64), Number(process.argv[6] ?? 10_000), process.argv[7]).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stdout.write(JSON.stringify({ attempt: 'fill', error: String(err) }) + '\n');
      process.exit(1);
    },
  );
} else main().catch((err: unknown) => {
  process.stdout.write(JSON.stringify({ attempt: 'connect', closed: false, extra: [String(err)], ms: 0 }) + '\n');
  process.exit(1);
});
