/** Shared set-up for integration tests: the runtime (QEMU + guest) of this machine. */
import { labRuntime, type LabRuntime } from '../../src/lab/runtime.js';

let cached: Promise<LabRuntime> | undefined;

export function runtime(): Promise<LabRuntime> {
  cached ??= labRuntime({ onProgress: (m) => process.stderr.write(`# ${m}\n`) });
  return cached;
}

/** Slow tests (several minutes each, or an extra QEMU build) run only when asked. */
export const SLOW = process.env.LOCKSTEP_SLOW_TESTS === '1';
