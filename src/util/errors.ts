/**
 * Every failure lockstep reports says what failed and what to do about it.
 * `hint` is the "what to do" part, shown to users under the message.
 */
export class LockstepError extends Error {
  readonly hint: string | undefined;
  constructor(message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'LockstepError';
    this.hint = options.hint;
  }
}

/** A wait that ran out of time. `what` names the thing that was awaited. */
export class TimeoutError extends LockstepError {
  readonly what: string;
  readonly ms: number;
  constructor(what: string, ms: number, hint?: string) {
    super(`timed out after ${ms} ms waiting for ${what}`, hint === undefined ? {} : { hint });
    this.name = 'TimeoutError';
    this.what = what;
    this.ms = ms;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** The message plus its hint, for terminals and logs. */
export function describeError(err: unknown): string {
  if (err instanceof LockstepError && err.hint) return `${err.message}\n  hint: ${err.hint}`;
  return errorMessage(err);
}
