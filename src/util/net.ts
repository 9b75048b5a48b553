import net from 'node:net';

/** Whether a TCP port can be bound on `host` right now. */
export function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/**
 * Finds `count` consecutive ports, starting the search at `from`, that are
 * free on every host given.
 */
export async function findFreePortRange(hosts: string[], count: number, from = 20000, to = 60000): Promise<number> {
  // Spread concurrent users apart a little.
  let base = from + (process.pid % 200) * 50;
  for (let tries = 0; tries < 400; tries++, base += count + 3) {
    if (base + count > to) base = from;
    let ok = true;
    for (let p = base; p < base + count && ok; p++) {
      for (const h of hosts) {
        if (!(await portFree(h, p))) {
          ok = false;
          break;
        }
      }
    }
    if (ok) return base;
  }
  throw new Error(`no ${count} consecutive free TCP ports between ${from} and ${to}`);
}

/**
 * Opens a TCP or unix-socket connection, bounded in time. Rejects with the
 * socket's own error, or with `onTimeout()` (the socket is destroyed).
 */
export function connectSocket(opts: net.NetConnectOpts, timeoutMs: number, onTimeout: () => Error): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(opts);
    const timer = setTimeout(() => {
      s.destroy();
      reject(onTimeout());
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * Whether something listens on the unix socket `file`: it accepts a
 * connection (or holds one open, silent, for `timeoutMs`). A refused
 * connection or a missing file: nobody.
 */
export function socketAnswers(file: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.createConnection({ path: file });
    const t = setTimeout(() => done(true), timeoutMs); // accepted but silent: someone is there
    const done = (v: boolean) => {
      clearTimeout(t);
      c.destroy();
      resolve(v);
    };
    c.once('connect', () => done(true));
    c.once('error', () => done(false));
  });
}
