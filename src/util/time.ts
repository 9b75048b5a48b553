import { TimeoutError } from './errors.js';

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Races `promise` against a timer. The timer never outlives the race, and
 * the error names what was awaited.
 */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string, hint?: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(what, ms, hint)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Reads every `intervalMs` (default 100) until `done` holds for what it read,
 * or `timeoutMs` has passed; says which, with the last reading, so that the
 * caller can name what it saw when it gives up.
 */
export async function pollUntil<T>(
  read: () => Promise<T> | T,
  done: (v: T) => boolean,
  opts: { timeoutMs: number; intervalMs?: number },
): Promise<{ done: boolean; last: T }> {
  const deadline = performance.now() + opts.timeoutMs;
  const interval = opts.intervalMs ?? 100;
  for (;;) {
    const last = await read();
    if (done(last)) return { done: true, last };
    if (performance.now() >= deadline) return { done: false, last };
    await sleep(Math.min(interval, Math.max(0, deadline - performance.now())));
  }
}

/**
 * Polls `check` every `intervalMs` until it returns a value other than
 * undefined/false, or throws TimeoutError after `timeoutMs`.
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  opts: { timeoutMs: number; intervalMs?: number; hint?: string },
): Promise<T> {
  const r = await pollUntil(check, (v) => v !== undefined && v !== false, opts);
  if (!r.done) throw new TimeoutError(what, opts.timeoutMs, opts.hint);
  return r.last as T;
}

/** Milliseconds since an arbitrary origin, monotonic. */
export function now(): number {
  return performance.now();
}
