/**
 * A VM on the daemons of two lab hosts (src/lab/daemon-vm.ts) for one test:
 * the lab QEMU and guest built first, everything ended after the test, the
 * logs kept.
 */
import type { TestContext } from 'node:test';
import { DaemonVmLab } from '../../src/lab/daemon-vm.js';
import { runtime, keepLogsOnly } from './lab.js';

export async function daemonLab(t: TestContext, prefix: string, o: { reprotect?: boolean } = {}): Promise<DaemonVmLab> {
  await runtime(); // the lab QEMU and the demo guest, built before the test's own clock matters
  const d = await DaemonVmLab.create(prefix, o);
  t.after(async () => {
    await d.end();
    keepLogsOnly(d.root);
  });
  return d;
}
