/**
 * A COLO-protected pair of demo-guest VMs on this one host, as in the COLO
 * documentation's test procedure: primary listeners on 127.0.0.1, the
 * secondary's migration and NBD on 127.0.0.2, user-mode networking with the
 * guest's HTTP and echo ports forwarded from 127.0.0.1 on the primary.
 *
 * This is the lab's minimal driver (tests and benchmarks of the data plane);
 * the product's bring-up from a config file builds on the same pieces.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { QmpClient, type QmpEvent } from '../qmp/client.js';
import { QemuProcess } from '../qemu/process.js';
import { createImage } from '../qemu/images.js';
import { primaryArgs, secondaryArgs, type ColoEndpoints, type HostForward, type MachineSpec } from '../qemu/cmdline.js';
import { waitForSerial } from '../qemu/serial.js';
import { secondaryEnterColo, primaryEnterColo, waitColoMode, setCheckpointDelay } from '../colo/startup.js';
import { findFreePortRange } from '../util/net.js';
import { waitFor } from '../util/time.js';
import { runtimeBase } from '../util/paths.js';
import type { LabRuntime } from './runtime.js';

export interface PairNode {
  role: 'primary' | 'secondary';
  proc: QemuProcess;
  qmp: QmpClient;
  serialLog: string;
  /** Every QMP event seen since start, in order. */
  events: QmpEvent[];
}

export interface PairOptions {
  runtime: Pick<LabRuntime, 'binary' | 'accel' | 'dataDirs' | 'guest'>;
  /** Where images, logs and sockets go (created). Default: a new temp dir. */
  dir?: string;
  memoryMiB?: number;
  diskBytes?: number;
  /** x-checkpoint-delay in ms, set once COLO runs (default: QEMU's 20000). */
  checkpointDelayMs?: number;
  compareTimeoutMs?: number;
  /** Wait for the guest's services to be ready (default true). */
  waitGuest?: boolean;
  log?: (msg: string) => void;
}

export class OneHostPair {
  private constructor(
    readonly dir: string,
    readonly bufferDir: string,
    readonly endpoints: ColoEndpoints,
    readonly httpPort: number,
    readonly echoPort: number,
    readonly primary: PairNode,
    readonly secondary: PairNode,
    readonly images: { primary: string; secondaryParent: string },
    /** The guest ports forwarded from 127.0.0.1 (on the primary; on the survivor after failover). */
    readonly forwards: HostForward[],
  ) {}

  get httpBase(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  static async start(o: PairOptions): Promise<OneHostPair> {
    const log = o.log ?? (() => {});
    const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-pair-'));
    fs.mkdirSync(dir, { recursive: true });
    const bufferDir = fs.mkdtempSync(path.join(runtimeBase(), `lockstep-${crypto.randomBytes(3).toString('hex')}-`));
    const diskBytes = o.diskBytes ?? 64 * 1024 * 1024;
    const images = { primary: path.join(dir, 'primary.qcow2'), secondaryParent: path.join(dir, 'secondary-parent.qcow2') };
    await createImage(images.primary, diskBytes);
    fs.copyFileSync(images.primary, images.secondaryParent);
    const active = path.join(bufferDir, 'active.qcow2');
    const hidden = path.join(bufferDir, 'hidden.qcow2');
    await createImage(active, diskBytes);
    await createImage(hidden, diskBytes);

    const base = await findFreePortRange(['127.0.0.1', '127.0.0.2'], 8);
    const e: ColoEndpoints = {
      primaryHost: '127.0.0.1',
      secondaryHost: '127.0.0.2',
      primaryLocal: '127.0.0.1',
      comparePrimaryPort: base,
      mirrorPort: base + 1,
      compareSecondaryPort: base + 2,
      compareOutPort: base + 3,
      migrationPort: base + 4,
      nbdPort: base + 5,
      reconnectMs: false,
      compareTimeoutMs: o.compareTimeoutMs,
    };
    const httpPort = base + 6;
    const echoPort = base + 7;
    const forwards: HostForward[] = [
      { hostAddr: '127.0.0.1', hostPort: httpPort, guestPort: 80 },
      { hostAddr: '127.0.0.1', hostPort: echoPort, guestPort: 7 },
    ];
    const machine = (role: 'primary' | 'secondary'): MachineSpec => ({
      name: role,
      accel: o.runtime.accel,
      memoryMiB: o.memoryMiB ?? 128,
      cpus: 1,
      kernel: o.runtime.guest.kernel,
      initrd: o.runtime.guest.initrd,
      append: 'console=ttyS0 quiet',
      dataDirs: o.runtime.dataDirs,
      serialLog: path.join(dir, `${role}-serial.log`),
      qmpSockets: [path.join(dir, `${role}-qmp.sock`), path.join(dir, `${role}-qmp2.sock`)],
      nic: { mode: 'user', forwards },
    });
    const pm = machine('primary');
    const sm = machine('secondary');
    log(`starting primary and secondary QEMU (${o.runtime.accel}) in ${dir}`);
    const pProc = new QemuProcess({ name: 'primary', binary: o.runtime.binary, args: primaryArgs(pm, e, { image: images.primary, format: 'qcow2' }), logFile: path.join(dir, 'primary-qemu.log') });
    const sProc = new QemuProcess({
      name: 'secondary',
      binary: o.runtime.binary,
      args: secondaryArgs(sm, e, { parent: images.secondaryParent, parentFormat: 'qcow2', active, hidden }),
      logFile: path.join(dir, 'secondary-qemu.log'),
    });
    const procs = [pProc, sProc];
    const clients: QmpClient[] = [];
    try {
      const connect = async (proc: QemuProcess, sock: string) => {
        await waitFor(`QMP socket ${sock}`, () => {
          proc.assertRunning('during start-up');
          return fs.existsSync(sock);
        }, { timeoutMs: 15_000, intervalMs: 20 });
        const c = await QmpClient.connect(sock, { timeoutMs: 15_000 });
        clients.push(c);
        return c;
      };
      const sQmp = await connect(sProc, sm.qmpSockets[0]!);
      const sEvents: QmpEvent[] = [];
      sQmp.on('event', (ev) => sEvents.push(ev));
      log('secondary: enabling x-colo and exporting its disk over NBD');
      await secondaryEnterColo(sQmp, { nbdHost: e.secondaryHost, nbdPort: e.nbdPort });
      const pQmp = await connect(pProc, pm.qmpSockets[0]!);
      const pEvents: QmpEvent[] = [];
      pQmp.on('event', (ev) => pEvents.push(ev));
      log('primary: attaching the replication child and migrating with x-colo');
      await primaryEnterColo(pQmp, { secondaryHost: e.secondaryHost, nbdPort: e.nbdPort, migrationPort: e.migrationPort });
      await Promise.all([waitColoMode(pQmp, 'primary', 30_000), waitColoMode(sQmp, 'secondary', 30_000)]);
      log('both nodes in COLO');
      if (o.checkpointDelayMs !== undefined) await setCheckpointDelay(pQmp, o.checkpointDelayMs);
      const pair = new OneHostPair(
        dir,
        bufferDir,
        e,
        httpPort,
        echoPort,
        { role: 'primary', proc: pProc, qmp: pQmp, serialLog: pm.serialLog, events: pEvents },
        { role: 'secondary', proc: sProc, qmp: sQmp, serialLog: sm.serialLog, events: sEvents },
        images,
        forwards,
      );
      if (o.waitGuest ?? true) {
        await waitForSerial(pm.serialLog, o.runtime.guest.readyMarker, 120_000, { alive: () => pProc.assertRunning('while the guest booted') });
        log('guest services ready');
      }
      return pair;
    } catch (err) {
      for (const c of clients) c.destroy();
      await Promise.all(procs.map((p) => p.stop(1000)));
      fs.rmSync(bufferDir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Number of checkpoints so far, counted from the primary's STOP events. */
  checkpoints(): number {
    return this.primary.events.filter((ev) => ev.event === 'STOP').length;
  }

  /** Primary pauses (STOP→RESUME) in ms. */
  pauses(): number[] {
    const out: number[] = [];
    let stop: number | undefined;
    for (const ev of this.primary.events) {
      if (ev.event === 'STOP') stop = ev.time;
      else if (ev.event === 'RESUME' && stop !== undefined) {
        out.push(ev.time - stop);
        stop = undefined;
      }
    }
    return out;
  }

  /** Ends both QEMUs (by PID) and removes the RAM-disk buffers. Keeps the run directory's logs unless `removeDir`. */
  async stop(opts: { removeDir?: boolean } = {}): Promise<void> {
    for (const n of [this.primary, this.secondary]) n.qmp.destroy();
    await Promise.all([this.primary.proc.stop(2000), this.secondary.proc.stop(2000)]);
    fs.rmSync(this.bufferDir, { recursive: true, force: true });
    if (opts.removeDir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
