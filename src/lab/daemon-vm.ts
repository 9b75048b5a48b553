/**
 * VM "web" on the daemons of two lab hosts that share nothing, with a
 * witness, driven with the CLI from the management host as a user would:
 * the lab hosts, their daemons, the VM file (its image only on a), `status`
 * read through the CLI. Used by the tests of the daemons and the host-loss
 * benchmark. `end()` ends everything that runs in the lab's hosts (daemons
 * and every QEMU they started), and leaves the logs.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { createLabHosts, type LabHosts } from './hosts.js';
import { LabDaemons } from './daemons.js';
import { startWitness, LAB_SECRET } from './scenario.js';
import { vmStatusSchema, type VmStatus } from '../daemon/api-types.js';
import { pidRunning } from '../util/proc.js';
import { sleep } from '../util/time.js';
import { LockstepError } from '../util/errors.js';

const statusSchema = z.object({ name: z.string(), protected: z.boolean(), hosts: z.array(z.object({ host: z.string(), status: vmStatusSchema.optional(), error: z.string().optional() })) });

export interface VmStatusView {
  code: number | null;
  protected: boolean;
  hosts: z.infer<typeof statusSchema>['hosts'];
  of(h: string): VmStatus | undefined;
}

export class DaemonVmLab {
  /** The VM file, as the management host sees it. */
  readonly vmFile = '/etc/lockstep/web.yaml';

  private constructor(
    readonly root: string,
    readonly hosts: LabHosts,
    readonly lab: LabDaemons,
    private readonly witness: number | undefined,
  ) {}

  static async create(prefix: string): Promise<DaemonVmLab> {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), `lockstep-${prefix}-`));
    const hosts = await createLabHosts({ prefix: prefix.slice(0, 2) });
    let lab: LabDaemons | undefined;
    try {
      lab = await LabDaemons.create(root, hosts, { tag: path.basename(root) });
      const witness = await startWitness(root, hosts.ns.witness, `${hosts.addr.mgmt.witness}:7900`);
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
      return new DaemonVmLab(root, hosts, lab, witness);
    } catch (err) {
      await lab?.remove();
      await hosts.remove();
      throw err;
    }
  }

  /** lockstep up -f, from the management host. */
  async up(): Promise<void> {
    const r = await this.lab.cli('mgmt', ['up', '-f', this.vmFile], { timeoutMs: 600_000 });
    if (r.code !== 0) throw new LockstepError(`lockstep up -f failed: ${r.stderr.trim()}`);
  }

  /** lockstep status web --json, from the management host. */
  async status(): Promise<VmStatusView> {
    const r = await this.lab.cli('mgmt', ['status', 'web', '--json']);
    const s = statusSchema.parse(JSON.parse(r.stdout));
    return { code: r.code, protected: s.protected, hosts: s.hosts, of: (h: string) => s.hosts.find((x) => x.host === h)?.status };
  }

  /** Waits until status says PROTECTED; the time it took. */
  async untilProtected(what: string, timeoutMs: number): Promise<{ s: VmStatusView; ms: number }> {
    const t0 = performance.now();
    for (;;) {
      const s = await this.status();
      if (s.protected) return { s, ms: performance.now() - t0 };
      if (performance.now() - t0 > timeoutMs) {
        throw new LockstepError(`${what}: not protected within ${timeoutMs} ms: ${JSON.stringify(s.hosts.map((h) => [h.host, h.status?.phase, h.status?.agent?.role, h.status?.agent?.degraded, h.error]))}`);
      }
      await sleep(250);
    }
  }

  async end(): Promise<void> {
    // Everything that runs in the lab's hosts is the lab's: daemons and every QEMU they started, seen or not.
    for (const h of ['a', 'b'] as const) await this.lab.crash(h);
    if (this.witness && pidRunning(this.witness)) process.kill(this.witness, 'SIGTERM');
    await this.lab.remove();
    await this.hosts.remove();
  }
}
