/**
 * A client that runs inside a lab network namespace (ip netns exec NS node
 * netns-client.js HOST [INTERVAL_MS [HTTP_TIMEOUT_MS [LOAD]]]) and talks to the guest directly over the bridge: one
 * persistent TCP connection to the echo service, and an HTTP counter loop
 * whose requests give up after HTTP_TIMEOUT_MS (default 15 s). LOAD=mixed adds
 * two load clients whose answers are not recorded: one reading the counter
 * without counting every 50 ms (answers the two VMs agree on), one asking a
 * page that differs on every call every second (each forces a checkpoint).
 * Prints a JSON line per second, and a summary when stdin closes.
 */
import net from 'node:net';
import readline from 'node:readline';

const host = process.argv[2] ?? '10.0.2.15';
const intervalMs = Number(process.argv[3] ?? 100);
const httpTimeoutMs = Number(process.argv[4] ?? 15_000);
const load = process.argv[5] ?? 'none';

/** answers: [sent at, answered at] of each good answer, wall-clock ms (the faults are timed by another process). */
const echo = { sent: 0, ok: 0, errors: [] as string[], maxMs: 0, closed: false, answers: [] as Array<[number, number]> };
const http = {
  ok: 0,
  errors: [] as string[],
  counts: [] as number[],
  maxMs: 0,
  okTimes: [] as number[],
  answers: [] as Array<[number, number]>,
  /** Every request in order: [id, start (ms since the client started), duration ms, count or null, error or null]. */
  requests: [] as Array<[number, number, number, number | null, string | null]>,
};
const startedAt = performance.now();
let running = true;

async function echoLoop(): Promise<void> {
  const s = net.createConnection({ host, port: 7 });
  await new Promise<void>((res, rej) => {
    s.once('connect', res);
    s.once('error', rej);
  });
  let buf = '';
  s.setEncoding('utf8');
  s.on('data', (d: string) => (buf += d));
  s.on('close', () => {
    if (running) echo.closed = true; // closed by the other end, not by us at the end
  });
  s.on('error', (e) => echo.errors.push(e.message));
  for (let i = 0; running; i++) {
    const msg = `m${i}\n`;
    const t0 = performance.now();
    const sentAt = Date.now();
    s.write(msg);
    echo.sent++;
    const deadline = Date.now() + 15_000;
    while (!buf.includes(msg) && Date.now() < deadline && !echo.closed) await new Promise((r) => setTimeout(r, 5));
    if (!buf.includes(msg)) {
      echo.errors.push(`no echo of ${msg.trim()} (${echo.closed ? 'connection closed' : 'timeout'})`);
      break;
    }
    buf = buf.slice(buf.indexOf(msg) + msg.length);
    echo.ok++;
    echo.answers.push([sentAt, Date.now()]);
    echo.maxMs = Math.max(echo.maxMs, performance.now() - t0);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  s.destroy();
}

async function httpLoop(): Promise<void> {
  for (let id = 1; running; id++) {
    const t0 = performance.now();
    const sentAt = Date.now();
    try {
      // The id is ignored by the guest; it names the request in captures and logs.
      const r = await fetch(`http://${host}/cgi-bin/cnt?r=${id}`, { signal: AbortSignal.timeout(httpTimeoutMs) });
      const m = /count=(\d+)/.exec(await r.text());
      if (!m) throw new Error(`status ${r.status}`);
      http.counts.push(Number(m[1]));
      http.okTimes.push(Date.now());
      http.answers.push([sentAt, Date.now()]);
      http.ok++;
      http.maxMs = Math.max(http.maxMs, performance.now() - t0);
      http.requests.push([id, Math.round(t0 - startedAt), Math.round(performance.now() - t0), Number(m[1]), null]);
    } catch (err) {
      http.errors.push(`request ${id}: ${(err as Error).message}`);
      http.requests.push([id, Math.round(t0 - startedAt), Math.round(performance.now() - t0), null, (err as Error).message]);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

const tick = setInterval(() => {
  process.stdout.write(JSON.stringify({ type: 'tick', echoOk: echo.ok, httpOk: http.ok, lastCount: http.counts.at(-1) ?? null, lastAnswerSentAt: http.answers.at(-1)?.[0] ?? null, errors: echo.errors.length + http.errors.length, lastError: echo.errors.at(-1) ?? http.errors.at(-1) }) + '\n');
}, 1000);

/** A load client: `path` every `everyMs`, its answers and errors not recorded (a request may wait out a fault). */
async function loadLoop(path: string, everyMs: number): Promise<void> {
  while (running) {
    try {
      await (await fetch(`http://${host}${path}`, { signal: AbortSignal.timeout(httpTimeoutMs) })).text();
    } catch {
      /* not measured */
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

const loops = Promise.all([
  echoLoop().catch((e: Error) => echo.errors.push(`connect: ${e.message}`)),
  httpLoop(),
  ...(load === 'mixed' ? [loadLoop('/cgi-bin/get', 50), loadLoop('/cgi-bin/info', 1000)] : []),
]);
readline.createInterface({ input: process.stdin }).on('close', async () => {
  running = false;
  await loops;
  clearInterval(tick);
  // Exit only once the summary is out: stdout is a pipe, written asynchronously, and an exit before it drained cut a
  // long summary short (seen: a 10-minute record cut at 219 KB).
  process.stdout.write(JSON.stringify({ type: 'summary', echo, http }) + '\n', () => process.exit(0));
});
