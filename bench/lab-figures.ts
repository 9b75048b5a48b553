/**
 * What the lab's daemons say of a run, read where they keep it: each host's
 * event journal (its records, for the failover's timeline) and its metrics
 * (the histograms of heartbeat gaps and witness round trips, scraped over
 * the API's local socket). For the benchmarks only; every read is bounded.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { journalRecordSchema, type JournalRecord } from '../src/daemon/api-types.js';
import { JOURNAL_FILE } from '../src/daemon/journal.js';

/** Every record of a host's journal (its current file and the rotated ones), oldest first; unreadable lines left out. */
export function journalRecords(stateDir: string): JournalRecord[] {
  const dir = path.join(stateDir, 'journal');
  const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.startsWith(JOURNAL_FILE)) : [];
  const out: JournalRecord[] = [];
  for (const f of files) {
    for (const line of fs.readFileSync(path.join(dir, f), 'utf8').split('\n')) {
      if (!line) continue;
      try {
        const r = journalRecordSchema.safeParse(JSON.parse(line));
        if (r.success) out.push(r.data);
      } catch {
        /* a line cut short */
      }
    }
  }
  return out.sort((a, b) => Date.parse(a.at) - Date.parse(b.at) || a.seq - b.seq);
}

/** GET `urlPath` on the daemon whose API listens on unix socket `socket`. */
export function getOverSocket(socket: string, urlPath: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath: socket, path: urlPath, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${urlPath} on ${socket}: HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath} on ${socket}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** A histogram of the exposition text, its series summed over labels: cumulative counts by upper bound (seconds). */
export interface Histogram {
  count: number;
  sum: number;
  /** [le, cumulative count], by le ascending (+Inf last). */
  buckets: Array<[number, number]>;
}

export function histogram(text: string, name: string): Histogram {
  const byLe = new Map<number, number>();
  let count = 0;
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const v = Number(m[4]);
    if (m[1] === `${name}_count`) count += v;
    else if (m[1] === `${name}_sum`) sum += v;
    else if (m[1] === `${name}_bucket`) {
      const le = /le="([^"]+)"/.exec(m[3] ?? '')?.[1];
      if (le === undefined) continue;
      const bound = le === '+Inf' ? Infinity : Number(le);
      byLe.set(bound, (byLe.get(bound) ?? 0) + v);
    }
  }
  return { count, sum, buckets: [...byLe.entries()].sort((a, b) => a[0] - b[0]) };
}

/** Adds histograms of the same buckets (several hosts' scrapes). */
export function addHistograms(hs: Histogram[]): Histogram {
  const byLe = new Map<number, number>();
  for (const h of hs) for (const [le, n] of h.buckets) byLe.set(le, (byLe.get(le) ?? 0) + n);
  return { count: hs.reduce((n, h) => n + h.count, 0), sum: hs.reduce((n, h) => n + h.sum, 0), buckets: [...byLe.entries()].sort((a, b) => a[0] - b[0]) };
}

/** How many observations were above each bound (the histogram's tail), bounds in ms. */
export function tail(h: Histogram): Array<{ overMs: number; n: number }> {
  return h.buckets.filter(([le]) => le !== Infinity).map(([le, n]) => ({ overMs: Math.round(le * 1000), n: h.count - n }));
}

/** The smallest bucket bound below which fraction q of the observations fell (an upper bound on the q-quantile), ms. */
export function quantileBoundMs(h: Histogram, q: number): number {
  for (const [le, n] of h.buckets) if (n >= q * h.count) return le === Infinity ? Infinity : Math.round(le * 1000);
  return Infinity;
}
