/**
 * The COLO procedures are sequences of QMP commands. Each runs as a named,
 * time-bounded step; a failure says which procedure and which step failed,
 * with QEMU's own error.
 */
import { LockstepError, describeError } from '../util/errors.js';
import { withTimeout } from '../util/time.js';

export interface Step {
  name: string;
  timeoutMs: number;
  run: () => Promise<unknown>;
}

export interface StepRecord {
  name: string;
  ms: number;
}

export class ColoStepError extends LockstepError {
  constructor(
    readonly procedure: string,
    readonly step: string,
    cause: unknown,
  ) {
    super(`${procedure}: step "${step}" failed: ${describeError(cause)}`, {
      cause,
      hint: 'the QEMU logs and `lockstep status` show the state each node was left in',
    });
    this.name = 'ColoStepError';
  }
}

export async function runSteps(procedure: string, steps: Step[], onStep?: (name: string) => void): Promise<StepRecord[]> {
  const done: StepRecord[] = [];
  for (const s of steps) {
    onStep?.(s.name);
    const t0 = performance.now();
    try {
      await withTimeout(s.run(), s.timeoutMs, `${procedure}: ${s.name}`);
    } catch (err) {
      throw new ColoStepError(procedure, s.name, err);
    }
    done.push({ name: s.name, ms: performance.now() - t0 });
  }
  return done;
}
