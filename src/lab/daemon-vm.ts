/**
 * VM "web" on the daemons of two lab hosts that share nothing, with a
 * witness, driven with the CLI from the management host as a user would:
 * the lab hosts, their daemons, the VM file (its image only on a), `status`
 * read through the CLI. Used by the tests of the daemons, the host-loss
 * benchmark, and `lockstep lab up` / the demo, which keep it between commands
 * (a record in its directory; open() finds it again). `end()` ends
 * everything that runs in the lab's hosts (daemons and every QEMU they
 * started) and the witness, and leaves the logs.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { createLabHosts, labHosts, type LabHosts } from './hosts.js';
import { LabDaemons } from './daemons.js';
import { startWitness, isLabWitness, LAB_SECRET } from './scenario.js';
import { vmStatusSchema, type VmStatus } from '../daemon/api-types.js';
import { witnessKeyFor } from '../node/witness.js';
import { pollUntil } from '../util/time.js';
import { LockstepError } from '../util/errors.js';
import { waitForSerial } from '../qemu/serial.js';
import { GUEST_READY_MARKER } from './guest.js';
import { labRuntime } from './runtime.js';

const statusSchema = z.object({ name: z.string(), protected: z.boolean(), hosts: z.array(z.object({ host: z.string(), status: vmStatusSchema.optional(), error: z.string().optional() })) });

export interface VmStatusView {
  code: number | null;
  protected: boolean;
  hosts: z.infer<typeof statusSchema>['hosts'];
  of(h: string): VmStatus | undefined;
}

/** The guest's address on the LAN of VM `name` in the lab: web is the demo guest's default, others get their own. */
export const LAB_GUEST_IPS: Record<string, string> = { web: '10.0.2.15', db: '10.0.2.16' };

/** A VM file on the management host, /etc/lockstep/NAME.yaml: the demo guest, 64 MiB disk created on its primary's host. */
function writeVmFile(lab: LabDaemons, hosts: LabHosts, o: { name: string; hosts: ['a' | 'b', 'a' | 'b']; reprotect: boolean }): void {
  const ip = LAB_GUEST_IPS[o.name];
  if (!ip) throw new LockstepError(`the lab has no guest address for VM "${o.name}"`, { hint: `one of ${Object.keys(LAB_GUEST_IPS).join(', ')}` });
  fs.writeFileSync(
    path.join(lab.dirs('mgmt').etc, `${o.name}.yaml`),
    [
      `name: ${o.name}`,
      `hosts: [${o.hosts.join(', ')}]`,
      'vm:',
      '  memory: 128M',
      '  kernel: demo',
      `  append: "console=ttyS0 quiet lockstep.ip=${ip}/24"`,
      `  disk: { image: /var/lib/lockstep/images/${o.name}.qcow2, create: true, size: 64M }`,
      // No taps named: each host's daemon makes its own (lstapN) on that host's bridge.
      '  network: { mode: tap, bridge: br0 }',
      // Each VM's own key at the shared witness (as lockstep witness-key prints it); no secret: up makes each VM its own.
      `agents: { witness: "${hosts.addr.mgmt.witness}:7900", witnessKey: ${witnessKeyFor(LAB_SECRET, o.name)}, reprotect: ${o.reprotect} }`,
      '',
    ].join('\n'),
  );
}

/** VM `name`'s file, as the management host sees it. */
function vmFileOf(name: string): string {
  return `/etc/lockstep/${name}.yaml`;
}

/** What a kept lab records in its directory, to be found again by a later command. */
const recordSchema = z.object({ ns: z.object({ a: z.string(), b: z.string(), witness: z.string(), client: z.string(), switch: z.string() }), tag: z.string(), witnessPid: z.number().optional() });

export class DaemonVmLab {
  /** The VM's name (the lab's first VM; addVm adds others). */
  readonly vm = 'web';
  /** The VM file, as the management host sees it. */
  readonly vmFile = vmFileOf(this.vm);
  /** The lab's VMs by name: each one's first primary (where its guest boots first). */
  private readonly vms = new Map<string, { primary: 'a' | 'b' }>([[this.vm, { primary: 'a' }]]);

  private constructor(
    readonly root: string,
    readonly hosts: LabHosts,
    readonly lab: LabDaemons,
    private readonly witness: number | undefined,
  ) {}

  static recordFile(root: string): string {
    return path.join(root, 'daemon-lab.json');
  }

  /**
   * A new lab: hosts, their daemons, a witness and the VM file (not up yet).
   * In a new temporary directory, or in `o.root` (kept: open(root) finds it).
   */
  static async create(prefix: string, o: { root?: string; reprotect?: boolean; onStep?: (m: string) => void; onUpdate?: (m: string) => void } = {}): Promise<DaemonVmLab> {
    if (o.root && fs.existsSync(DaemonVmLab.recordFile(o.root))) {
      throw new LockstepError(`a lab is already up in ${o.root}`, { hint: 'use it, or stop it first with lockstep lab down' });
    }
    // QEMU and the guest, built on this machine's own network before any host exists: a lab host has no way out,
    // and its daemon never builds anything (it finds what was published here: qemu/builds.ts).
    await labRuntime({ onProgress: o.onStep, onStep: o.onStep, onUpdate: o.onUpdate });
    o.onStep?.('creating the lab hosts (network and mount namespaces), their keys and daemons, and the witness');
    const root = o.root ?? fs.mkdtempSync(path.join(os.tmpdir(), `lockstep-${prefix}-`));
    fs.mkdirSync(root, { recursive: true });
    const hosts = await createLabHosts({ prefix: prefix.slice(0, 2) });
    // Unique among the labs of this machine: the mount namespaces are named after it.
    const tag = o.root ? hosts.ns.switch : path.basename(root);
    let lab: LabDaemons | undefined;
    try {
      lab = await LabDaemons.create(root, hosts, { tag });
      const witness = await startWitness(root, hosts.ns.witness, `${hosts.addr.mgmt.witness}:7900`);
      writeVmFile(lab, hosts, { name: 'web', hosts: ['a', 'b'], reprotect: o.reprotect ?? true });
      // The lab's first VM: its primary on a, as the constructor records it.
      if (o.root) fs.writeFileSync(DaemonVmLab.recordFile(root), JSON.stringify({ ns: hosts.ns, tag, witnessPid: witness }, null, 2) + '\n');
      return new DaemonVmLab(root, hosts, lab, witness);
    } catch (err) {
      await lab?.remove();
      await hosts.remove();
      throw err;
    }
  }

  /** The lab that create(prefix, { root }) left in `root`; undefined when there is none. */
  static async open(root: string): Promise<DaemonVmLab | undefined> {
    let rec: z.infer<typeof recordSchema>;
    try {
      rec = recordSchema.parse(JSON.parse(fs.readFileSync(DaemonVmLab.recordFile(root), 'utf8')));
    } catch {
      return undefined;
    }
    const hosts = labHosts(rec.ns);
    const lab = await LabDaemons.open(root, hosts, { tag: rec.tag });
    if (!lab) throw new LockstepError(`the lab in ${root} is half gone (its hosts' mount namespaces are missing; a reboot?)`, { hint: `remove ${DaemonVmLab.recordFile(root)} and start a new one` });
    return new DaemonVmLab(root, hosts, lab, rec.witnessPid);
  }

  /** Another VM's file on the management host (see LAB_GUEST_IPS), for up({ vm: name }). */
  addVm(name: string, hosts: ['a' | 'b', 'a' | 'b'], o: { reprotect?: boolean } = {}): void {
    writeVmFile(this.lab, this.hosts, { name, hosts, reprotect: o.reprotect ?? true });
    this.vms.set(name, { primary: hosts[0] });
  }

  /**
   * lockstep up -f of VM `vm`'s file (web unless told), from the management host;
   * `onLine` sees its progress. Then waits until the guest's services run
   * (its serial console on the primary's host says so): up returns once the
   * VM is protected, which can be before the guest has booted, and a client
   * that connects before then is refused (seen: an echo connection refused
   * 3 s before the guest was ready).
   */
  async up(o: { onLine?: (line: string) => void; vm?: string } = {}): Promise<void> {
    const vm = o.vm ?? this.vm;
    const r = await this.lab.cli('mgmt', ['up', '-f', vmFileOf(vm)], { timeoutMs: 600_000, onLine: o.onLine });
    if (r.code !== 0) throw new LockstepError(`lockstep up -f failed: ${r.stderr.trim()}`);
    o.onLine?.(`waiting for the guest's services (VM ${vm})`);
    await this.guestReady(vm);
  }

  /** Waits until VM `name`'s guest says its services run, on the serial console of its first primary's host. */
  async guestReady(name = this.vm): Promise<void> {
    const primary = this.vms.get(name)?.primary;
    if (!primary) throw new LockstepError(`the lab has no VM "${name}"`);
    await waitForSerial(path.join(this.lab.dirs(primary).state, 'vms', name, primary, 'serial.log'), GUEST_READY_MARKER, 120_000);
  }

  /** The host whose agent writes the VM's disk (primary, or alone), as status says; undefined if none. */
  async writer(vm = this.vm): Promise<'a' | 'b' | undefined> {
    const s = await this.status(vm);
    return (['a', 'b'] as const).find((h) => s.of(h)?.agent?.role === 'primary' || s.of(h)?.agent?.role === 'alone');
  }

  /** lockstep status NAME --json (web unless told), from the management host. */
  async status(vm = this.vm): Promise<VmStatusView> {
    const r = await this.lab.cli('mgmt', ['status', vm, '--json']);
    const s = statusSchema.parse(JSON.parse(r.stdout));
    return { code: r.code, protected: s.protected, hosts: s.hosts, of: (h: string) => s.hosts.find((x) => x.host === h)?.status };
  }

  /** Waits until status says PROTECTED; the time it took. */
  async untilProtected(what: string, timeoutMs: number, vm = this.vm): Promise<{ s: VmStatusView; ms: number }> {
    const t0 = performance.now();
    const r = await pollUntil(() => this.status(vm), (s) => s.protected, { timeoutMs, intervalMs: 250 });
    if (!r.done) {
      throw new LockstepError(`${what}: not protected within ${timeoutMs} ms: ${JSON.stringify(r.last.hosts.map((h) => [h.host, h.status?.phase, h.status?.agent?.role, h.status?.agent?.degraded, h.error]))}`);
    }
    return { s: r.last, ms: performance.now() - t0 };
  }

  async end(): Promise<void> {
    // Everything that runs in the lab's hosts is the lab's: daemons and every QEMU they started, seen or not.
    for (const h of ['a', 'b'] as const) await this.lab.crash(h);
    if (this.witness && isLabWitness(this.witness, this.root)) process.kill(this.witness, 'SIGTERM');
    await this.lab.remove();
    await this.hosts.remove();
    fs.rmSync(DaemonVmLab.recordFile(this.root), { force: true });
  }
}
