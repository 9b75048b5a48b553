/** Small clients for the demo guest's services, each request bounded in time. */
import net from 'node:net';

export async function httpGet(url: string, timeoutMs = 10_000): Promise<{ status: number; body: string; ms: number }> {
  const t0 = performance.now();
  const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const body = await r.text();
  return { status: r.status, body, ms: performance.now() - t0 };
}

/** Polls `url` until it answers (e.g. while the guest boots). */
export async function waitHttp(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await httpGet(url, 3000);
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** GET /cgi-bin/cnt and parse "count=N". */
export async function bumpCounter(base: string, timeoutMs = 10_000): Promise<number> {
  const r = await httpGet(`${base}/cgi-bin/cnt`, timeoutMs);
  const m = /^count=(\d+)$/m.exec(r.body);
  if (r.status !== 200 || !m) throw new Error(`unexpected counter answer ${r.status}: ${r.body.slice(0, 100)}`);
  return Number(m[1]);
}

export interface LoadStats {
  requests: number;
  errors: string[];
  latencies: number[];
}

/**
 * Requests /cgi-bin/info (different on every call and between the VMs, so
 * every answer miscompares and forces a checkpoint) from `concurrency` loops
 * until `stop()` returns true or `maxMs` passes.
 */
export async function alwaysDifferentLoad(base: string, opts: { stop: () => boolean; maxMs: number; concurrency?: number; timeoutMs?: number }): Promise<LoadStats> {
  const stats: LoadStats = { requests: 0, errors: [], latencies: [] };
  const deadline = Date.now() + opts.maxMs;
  const loop = async () => {
    while (!opts.stop() && Date.now() < deadline) {
      try {
        const r = await httpGet(`${base}/cgi-bin/info`, opts.timeoutMs ?? 10_000);
        if (r.status !== 200 || !r.body.includes('uptime=')) stats.errors.push(`status ${r.status}: ${r.body.slice(0, 80)}`);
        stats.latencies.push(r.ms);
      } catch (err) {
        stats.errors.push((err as Error).message);
      }
      stats.requests++;
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 2 }, loop));
  return stats;
}

/** One persistent TCP connection to the echo service. */
export class EchoClient {
  private buf = '';
  private waiters: Array<() => void> = [];
  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buf += d;
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static connect(host: string, port: number, timeoutMs = 5000): Promise<EchoClient> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection({ host, port });
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error(`echo connect to ${host}:${port} timed out`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new EchoClient(s));
      });
      s.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  /** Sends a line and waits for it to come back. */
  async roundTrip(line: string, timeoutMs = 5000): Promise<number> {
    const t0 = performance.now();
    this.socket.write(line + '\n');
    const deadline = Date.now() + timeoutMs;
    while (!this.buf.includes(line + '\n')) {
      if (Date.now() > deadline) throw new Error(`echo of "${line}" not received within ${timeoutMs} ms`);
      if (this.socket.destroyed) throw new Error('echo connection closed');
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    this.buf = this.buf.slice(this.buf.indexOf(line + '\n') + line.length + 1);
    return performance.now() - t0;
  }

  close(): void {
    this.socket.destroy();
  }
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}
