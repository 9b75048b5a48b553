/** Shared set-up for integration tests: the runtime (QEMU + guest) of this machine. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, after, afterEach } from 'node:test';
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
 * Whether a test passed, read in its after or afterEach hook (Node 20 has
 * `passed` on the context; its types do not say so yet). Unknown counts as
 * failed: the logs stay.
 */
export function testPassed(t: object): boolean {
  return (t as { passed?: unknown }).passed === true;
}

/**
 * Ends a lab directory's life. After a failure the logs (QEMU, agents, serial
 * consoles, witness) stay for whoever reads it, the disk images go (they are
 * large), and the output says where; after a success nothing stays.
 */
export function endLabDir(dir: string, failed: boolean): void {
  if (!failed) {
    fs.rmSync(dir, { recursive: true, force: true });
    return;
  }
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
  let passed = 0;
  let failed = 0;
  before(async () => {
    if (isRoot) lab = await HostsLab.create(fs.mkdtempSync(path.join(os.tmpdir(), `lockstep-${prefix}-`)));
  });
  afterEach((t) => void (testPassed(t) ? passed++ : failed++));
  after(async () => {
    if (!lab) return;
    await lab.remove();
    endLabDir(lab.root, failed > 0 || passed === 0);
  });
  return () => {
    if (!lab) throw new Error('the lab hosts were not created (not root?)');
    return lab;
  };
}
