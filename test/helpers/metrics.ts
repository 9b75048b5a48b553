/**
 * Reading the daemons' metrics in tests: a scrape over a daemon's local
 * socket (as root on its host), one series' value from the exposition text,
 * and `promtool check metrics` (Debian's prometheus package) on it.
 */
import http from 'node:http';
import { spawnSync } from 'node:child_process';
import { LockstepError } from '../../src/util/errors.js';

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

/** The value of series `name{labels}` (the labels given must match, others may be there), undefined when absent. */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map([...(m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[4]);
  }
  return undefined;
}

/** The sum of every series `name` whose labels include `labels`. */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map([...(m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) sum += Number(m[4]);
  }
  return sum;
}

/** promtool's verdict on an exposition text: its exit code and what it said. */
export function promtoolCheckMetrics(text: string): { code: number; out: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw new LockstepError(`promtool cannot run: ${r.error.message}`, { hint: "scripts/setup.sh installs it (Debian's prometheus package)" });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}`.trim() };
}
