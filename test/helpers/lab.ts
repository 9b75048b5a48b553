/** Shared set-up for integration tests: the runtime (QEMU + guest) of this machine. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, after } from 'node:test';
import { labRuntime, type LabRuntime } from '../../src/lab/runtime.js';
import { HostsLab } from '../../src/lab/hosts-scenario.js';

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

/**
 * The lab's separate hosts for the tests of one file: created before them,
 * removed after them (logs kept); nothing when not root. Returns the lab.
 */
export function hostsLabForTests(prefix: string): () => HostsLab {
  let lab: HostsLab | undefined;
  const isRoot = process.getuid?.() === 0;
  before(async () => {
    if (isRoot) lab = await HostsLab.create(fs.mkdtempSync(path.join(os.tmpdir(), `lockstep-${prefix}-`)));
  });
  after(async () => {
    if (!lab) return;
    await lab.remove();
    keepLogsOnly(lab.root);
  });
  return () => {
    if (!lab) throw new Error('the lab hosts were not created (not root?)');
    return lab;
  };
}
