/**
 * A VM on the daemons of two lab hosts, for the tests that drive it with
 * the CLI from the management host: the hosts, their daemons, the witness,
 * the VM file, and `status` read through the CLI. Everything is ended after
 * the test (QEMUs by the PIDs the daemons reported), the logs kept.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { z } from 'zod';
import { createLabHosts, type LabHosts } from '../../src/lab/hosts.js';
import { LabDaemons } from '../../src/lab/daemons.js';
import { startWitness, LAB_SECRET } from '../../src/lab/scenario.js';
import { vmStatusSchema, type VmStatus } from '../../src/daemon/api-types.js';
import { pidRunning } from '../../src/util/proc.js';
import { sleep } from '../../src/util/time.js';
import { runtime, keepLogsOnly } from './lab.js';

const statusSchema = z.object({ name: z.string(), protected: z.boolean(), hosts: z.array(z.object({ host: z.string(), status: vmStatusSchema.optional(), error: z.string().optional() })) });

export interface VmStatusView {
  code: number | null;
  protected: boolean;
  hosts: z.infer<typeof statusSchema>['hosts'];
  of(h: string): VmStatus | undefined;
}

export interface DaemonLab {
  root: string;
  hosts: LabHosts;
  lab: LabDaemons;
  /** The VM file on the management host. */
  vmFile: string;
  status(): Promise<VmStatusView>;
  untilProtected(what: string, timeoutMs: number): Promise<{ s: VmStatusView; ms: number }>;
}

/** The lab hosts with daemons and a witness, and the VM file of VM "web" (image only on a), for one test. */
export async function daemonLab(t: TestContext, prefix: string): Promise<DaemonLab> {
  await runtime(); // the lab QEMU and the demo guest, built before the test's own clock matters
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `lockstep-${prefix}-`));
  const hosts = await createLabHosts({ prefix: prefix.slice(0, 2) });
  const qemus = new Set<number>();
  let witness: number | undefined;
  let lab: LabDaemons | undefined;
  t.after(async () => {
    for (const p of qemus) if (pidRunning(p)) process.kill(p, 'SIGKILL');
    if (witness && pidRunning(witness)) process.kill(witness, 'SIGTERM');
    await lab?.remove();
    await hosts.remove();
    keepLogsOnly(root);
  });
  lab = await LabDaemons.create(root, hosts, { tag: path.basename(root) });
  witness = await startWitness(root, hosts.ns.witness, `${hosts.addr.mgmt.witness}:7900`);
  fs.writeFileSync(
    path.join(lab.dirs('mgmt').etc, 'web.yaml'),
    [
      'name: web',
      'hosts: [a, b]',
      'vm:',
      '  memory: 128M',
      '  kernel: demo',
      '  disk: { image: /var/lib/lockstep/images/web.qcow2, create: true, size: 64M }',
      '  network: { mode: tap, bridge: br0, taps: { a: tap-a, b: tap-b } }',
      `agents: { secret: "${LAB_SECRET}", witness: "${hosts.addr.mgmt.witness}:7900", reprotect: true }`,
      '',
    ].join('\n'),
  );
  const l = lab;
  const status = async (): Promise<VmStatusView> => {
    const r = await l.cli('mgmt', ['status', 'web', '--json']);
    const s = statusSchema.parse(JSON.parse(r.stdout));
    for (const h of s.hosts) if (h.status?.agent?.qemuPid) qemus.add(h.status.agent.qemuPid);
    return { code: r.code, protected: s.protected, hosts: s.hosts, of: (h: string) => s.hosts.find((x) => x.host === h)?.status };
  };
  const untilProtected = async (what: string, timeoutMs: number) => {
    const t0 = performance.now();
    for (;;) {
      const s = await status();
      if (s.protected) return { s, ms: performance.now() - t0 };
      if (performance.now() - t0 > timeoutMs) assert.fail(`${what}: not protected within ${timeoutMs} ms: ${JSON.stringify(s.hosts.map((h) => [h.host, h.status?.phase, h.status?.agent?.role, h.status?.agent?.degraded, h.error]))}`);
      await sleep(250);
    }
  };
  return { root, hosts, lab, vmFile: '/etc/lockstep/web.yaml', status, untilProtected };
}
