/** Shared set-up for integration tests: the runtime (QEMU + guest) of this machine. */
import fs from 'node:fs';
import path from 'node:path';
import { labRuntime, type LabRuntime } from '../../src/lab/runtime.js';

let cached: Promise<LabRuntime> | undefined;

export function runtime(): Promise<LabRuntime> {
  cached ??= labRuntime({ onProgress: (m) => process.stderr.write(`# ${m}\n`) });
  return cached;
}

/** Slow tests (several minutes each, or an extra QEMU build) run only when asked. */
export const SLOW = process.env.LOCKSTEP_SLOW_TESTS === '1';

/**
 * Ends a lab directory's life: the disk images go (they are large), the logs
 * (QEMU, agents, serial consoles, witness) stay for whoever reads a failure.
 */
export function keepLogsOnly(dir: string): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && /\.(qcow2|raw|img)$/.test(e.name)) fs.rmSync(path.join(e.parentPath, e.name), { force: true });
  }
  process.stderr.write(`# lab logs kept in ${dir}\n`);
}
