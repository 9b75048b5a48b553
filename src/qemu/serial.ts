import fs from 'node:fs';
import { waitFor } from '../util/time.js';

export function readSerial(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** Waits until the serial log contains `marker` (after byte `from`). Returns the offset just past it. */
export async function waitForSerial(file: string, marker: string | RegExp, timeoutMs: number, opts: { from?: number; alive?: () => void } = {}): Promise<number> {
  return waitFor(
    `${typeof marker === 'string' ? `"${marker}"` : marker} on the serial console (${file})`,
    () => {
      opts.alive?.();
      const text = readSerial(file).slice(opts.from ?? 0);
      if (typeof marker === 'string') {
        const i = text.indexOf(marker);
        return i >= 0 ? (opts.from ?? 0) + i + marker.length : undefined;
      }
      const m = marker.exec(text);
      return m ? (opts.from ?? 0) + m.index + m[0].length : undefined;
    },
    { timeoutMs, intervalMs: 100 },
  );
}

/** Guest kernel trouble as printed on a serial console. */
export const KERNEL_TROUBLE = /(Oops|BUG:|kernel BUG|general protection fault|Kernel panic|list_del corruption|list_add corruption|Call Trace:|WARNING: CPU)/;

export function kernelTroubleLines(text: string): string[] {
  return text.split('\n').filter((l) => KERNEL_TROUBLE.test(l));
}
