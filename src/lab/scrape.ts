/**
 * Reading a lab daemon's metrics, for the tests and the benchmarks: a GET
 * over the daemon's local API socket (as root on its host), and the series
 * of a Prometheus exposition text, parsed line by line. Bounded: every GET
 * has a timeout.
 */
import http from 'node:http';

/** GET `path` on the daemon that listens on unix socket `socket`: its status and body. */
export function getOverSocket(socket: string, path: string, timeoutMs = 10_000): Promise<{ status: number; body: string; contentType: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath: socket, path, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, contentType: String(res.headers['content-type'] ?? '') }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} on ${socket}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** One sample of an exposition text: its series name, labels and value. */
export interface Sample {
  name: string;
  labels: Map<string, string>;
  value: number;
}

/** Every sample of an exposition text (comments and blank lines left out). */
export function samples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels = new Map([...(m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1]!, x[2]!]));
    out.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return out;
}

/** The sample has every label of `labels` (others may be there). */
export function hasLabels(s: Sample, labels: Record<string, string>): boolean {
  return Object.entries(labels).every(([k, v]) => s.labels.get(k) === v);
}
