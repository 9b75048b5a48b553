/**
 * What the lab's daemons say of a run, read where they keep it: each host's
 * event journal (its records, for the failover's timeline) and its metrics
 * (the histograms of heartbeat gaps and witness round trips, scraped over
 * the API's local socket). For the benchmarks only; every read is bounded.
 */
import fs from 'node:fs';
import path from 'node:path';
import { journalRecordSchema, type JournalRecord } from '../src/daemon/api-types.js';
import { JOURNAL_FILE } from '../src/daemon/journal.js';
import { getOverSocket, samples } from '../src/lab/scrape.js';

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

/** The metrics' exposition text of the daemon whose API listens on unix socket `socket`. */
export async function scrapeMetrics(socket: string): Promise<string> {
  const r = await getOverSocket(socket, '/metrics');
  if (r.status !== 200) throw new Error(`GET /metrics on ${socket}: HTTP ${r.status}`);
  return r.body;
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
  for (const s of samples(text)) {
    if (s.name === `${name}_count`) count += s.value;
    else if (s.name === `${name}_sum`) sum += s.value;
    else if (s.name === `${name}_bucket`) {
      const le = s.labels.get('le');
      if (le === undefined) continue;
      const bound = le === '+Inf' ? Infinity : Number(le);
      byLe.set(bound, (byLe.get(bound) ?? 0) + s.value);
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
