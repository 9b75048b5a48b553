/** Drives lab/netns-client.js inside a lab network namespace and reads its reports. */
import path from 'node:path';
import readline from 'node:readline';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { packageRoot } from '../util/paths.js';

export interface Tick {
  type: 'tick';
  echoOk: number;
  httpOk: number;
  lastCount: number | null;
  /** When the request of the newest good counter answer was sent (wall-clock ms). */
  lastAnswerSentAt: number | null;
  /** Echo and HTTP errors so far. */
  errors: number;
  /** The echo's newest error, else the counter's, as the client saw it (e.g. `connect: connect ECONNREFUSED 10.0.2.15:7`). */
  lastError?: string;
}
export interface ClientSummary {
  type: 'summary';
  /** answers: [sent at, answered at] of each good answer, wall-clock ms. */
  echo: { sent: number; ok: number; errors: string[]; maxMs: number; closed: boolean; answers: Array<[number, number]> };
  /** okTimes: wall-clock ms of each good answer; answers: [sent at, answered at] of each, wall-clock ms. */
  http: {
    ok: number;
    errors: string[];
    counts: number[];
    maxMs: number;
    okTimes: number[];
    answers: Array<[number, number]>;
    /** Every request in order: [id, start ms, duration ms, count or null, error or null]. */
    requests: Array<[number, number, number, number | null, string | null]>;
  };
}

/** Clients started and not yet ended: a test that fails between start and finish must not leave one running. */
const running = new Set<NetnsClient>();

/**
 * A lab client. Every client is ended by finish(), by a failed until() or
 * finish(), or by NetnsClient.endAll() (a test's after hook): a client left
 * running keeps the test's process alive, and the test runner waits for it
 * without bound (a CI run hung so after a failed until()).
 */
export class NetnsClient {
  private last: Tick = { type: 'tick', echoOk: 0, httpOk: 0, lastCount: null, lastAnswerSentAt: null, errors: 0 };
  private readonly summary: Promise<ClientSummary>;
  private stderrTail = '';
  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    running.add(this);
    child.once('close', () => running.delete(this));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => (this.stderrTail = (this.stderrTail + d).slice(-2000)));
    let resolve!: (s: ClientSummary) => void;
    let reject!: (e: Error) => void;
    this.summary = new Promise((res, rej) => ((resolve = res), (reject = rej)));
    readline.createInterface({ input: child.stdout }).on('line', (l) => {
      let m: Tick | ClientSummary;
      try {
        m = JSON.parse(l) as Tick | ClientSummary;
      } catch (err) {
        reject(new Error(`the lab client sent a line that is not JSON (${l.length} bytes, ${(err as Error).message})`));
        return;
      }
      if (m.type === 'tick') this.last = m;
      else resolve(m);
    });
    child.once('close', (code) => reject(new Error(`the lab client ended (${code}) without its summary`)));
  }

  /** o.httpTimeoutMs: when a counter request gives up (15 s); o.load: 'mixed' adds the two load clients (netns-client.ts). */
  static start(netns: string, host: string, intervalMs = 100, o: { httpTimeoutMs?: number; load?: 'none' | 'mixed' } = {}): NetnsClient {
    const script = path.join(packageRoot(), 'dist', 'src', 'lab', 'netns-client.js');
    const args = [host, String(intervalMs), String(o.httpTimeoutMs ?? 15_000), o.load ?? 'none'];
    return new NetnsClient(spawn('ip', ['netns', 'exec', netns, process.execPath, script, ...args], { stdio: 'pipe' }));
  }

  get latest(): Tick {
    return this.last;
  }

  /** Waits for `pred` on the newest report; on timeout the client is ended and the error says its last report. */
  async until(pred: (t: Tick) => boolean, timeoutMs: number, what: string): Promise<Tick> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.last)) {
      if (Date.now() > deadline) {
        this.end();
        throw new Error(`client: ${what} not reached in ${timeoutMs} ms (last ${JSON.stringify(this.last)})${this.stderrTail ? `; its stderr: ${this.stderrTail.trim()}` : ''}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return this.last;
  }

  /**
   * Asks the client to stop and returns its summary. It stops once its
   * requests in flight end (each bounded by its own timeout); past `timeoutMs`
   * it is ended and this fails.
   */
  async finish(timeoutMs = 60_000): Promise<ClientSummary> {
    this.child.stdin.end();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, rej) => {
      timer = setTimeout(() => {
        this.end();
        rej(new Error(`the lab client sent no summary within ${timeoutMs} ms of being asked to stop; ended it`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.summary, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends the client at once (its summary is lost). */
  end(): void {
    this.summary.catch(() => undefined); // nobody may wait for it any more
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }

  /** Ends every client still running; for a test's after hook. */
  static endAll(): void {
    for (const c of running) c.end();
  }
}

/**
 * What a client felt of a fault, from its own record of every good answer
 * ([sent at, answered at], wall-clock ms): the longest time it went without
 * an answer (between two answers in a row), and the time from the fault to
 * the first answer to a request sent after the fault. Only such a request can
 * have been answered by whoever runs the VM after the fault: an answer that
 * was already on its way when the fault struck says nothing of the survivor.
 */
export interface Interruption {
  /** The longest time between two answers in a row, ms (0 with fewer than two answers). */
  longestGapMs: number;
  /** When that gap began and ended (the two answers), wall-clock ms. */
  gapFrom?: number;
  gapTo?: number;
  /** Fault → the first answer to a request sent at or after it, ms; undefined when none came. */
  firstAfterFaultMs?: number;
}

export function interruption(answers: ReadonlyArray<readonly [number, number]>, faultAt?: number): Interruption {
  const at = answers.map((a) => a[1]).sort((x, y) => x - y);
  const out: Interruption = { longestGapMs: 0 };
  for (let k = 1; k < at.length; k++) {
    const gap = at[k]! - at[k - 1]!;
    if (gap > out.longestGapMs) Object.assign(out, { longestGapMs: gap, gapFrom: at[k - 1], gapTo: at[k] });
  }
  if (faultAt !== undefined) {
    const first = answers.filter(([sent]) => sent >= faultAt).reduce<number | undefined>((m, [, got]) => (m === undefined || got < m ? got : m), undefined);
    if (first !== undefined) out.firstAfterFaultMs = first - faultAt;
  }
  return out;
}

/**
 * The interruption of one fault among several in a run: from the last answer
 * before `faultAt` to `untilAt` (the end of that fault's round).
 */
export function roundInterruption(answers: ReadonlyArray<readonly [number, number]>, faultAt: number, untilAt: number): Interruption {
  const lastBefore = answers.reduce((m, [, got]) => (got < faultAt && got > m ? got : m), -Infinity);
  return interruption(answers.filter(([, got]) => got >= lastBefore && got <= untilAt), faultAt);
}

/**
 * Checks the counter against the client's own record of every request: the
 * value never goes back nor repeats, and every value skipped between two
 * answers is explained by a request in between that failed (it may have run,
 * its answer lost). So a skip is an acknowledged write lost only when no
 * failed request can account for it.
 */
export function counterGaps(requests: ClientSummary['http']['requests']): string | undefined {
  let last: { id: number; count: number } | undefined;
  let failedSince = 0;
  for (const [id, , , count, error] of requests) {
    if (count === null) {
      if (error !== null) failedSince++;
      continue;
    }
    if (last) {
      const step = count - last.count;
      if (step < 1) return `the counter went back or repeated: request ${last.id} saw ${last.count}, request ${id} saw ${count}`;
      if (step - 1 > failedSince) return `request ${id} saw ${count} after ${last.count} (request ${last.id}): ${step - 1} value(s) skipped, but only ${failedSince} request(s) failed in between`;
    }
    last = { id, count };
    failedSince = 0;
  }
  return undefined;
}

/**
 * Checks the counter sequence a client saw: never back, never repeated, and
 * at most `kills` skips of one (a request in flight at a kill may have been
 * applied with its answer lost).
 */
export function counterProblems(counts: number[], kills = 1): string | undefined {
  const steps = counts.slice(1).map((c, i) => c - counts[i]!);
  const around = (i: number) => `answers ${Math.max(0, i - 3)}-${i + 4}: ${JSON.stringify(counts.slice(Math.max(0, i - 3), i + 5))}`;
  const back = steps.findIndex((d) => d < 1);
  if (back >= 0) return `went back or repeated at ${around(back)}`;
  const far = steps.findIndex((d) => d > 2);
  if (far >= 0) return `skipped acknowledged values at ${around(far)}`;
  const skips = steps.flatMap((d, i) => (d === 2 ? [i] : []));
  if (skips.length > kills) return `skipped ${skips.length} values, more than ${kills} (requests in flight at a kill), at ${skips.map(around).join('; ')}`;
  return undefined;
}
