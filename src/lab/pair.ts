/**
 * A COLO-protected pair of demo-guest VMs on this one host for tests,
 * benchmarks and the demo: a generated config (free ports, a private state
 * directory) brought up through the product's own `up`, with both QMP
 * connections kept open and every event recorded.
 */
import { removeBuffers } from '../pair/buffers.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { QmpClient, QmpEvent } from '../qmp/client.js';
import type { QemuProcess } from '../qemu/process.js';
import type { HostForward } from '../qemu/cmdline.js';
import { waitForSerial } from '../qemu/serial.js';
import { loadConfig, type ResolvedConfig } from '../config/load.js';
import { up } from '../pair/up.js';
import { checkpointNow } from '../colo/startup.js';
import { findFreePortRange } from '../util/net.js';
import { runtimeBase } from '../util/paths.js';
import { GUEST_READY_MARKER } from './guest.js';

export interface PairNode {
  name: string;
  role: 'primary' | 'secondary';
  proc: QemuProcess;
  qmp: QmpClient;
  serialLog: string;
  /** The disk this node's VM writes (the primary's image, the secondary's replica). */
  disk: string;
  /** Every QMP event since start, in order. */
  events: QmpEvent[];
}

export interface PairOptions {
  /** QEMU binary and accelerator; default: what `qemu.accel: auto` chooses. allowMissingFixes: a test of a build without a fix. */
  qemu?: { binary?: string; accel?: 'auto' | 'kvm' | 'tcg'; allowMissingFixes?: boolean };
  /** Where config, images and logs go (created). Default: a new temp dir. */
  dir?: string;
  memory?: string;
  checkpointDelayMs?: number;
  compareTimeoutMs?: number;
  /** The data plane's TLS (replication.tls; default on). */
  tls?: boolean;
  /** A node's data directory (its replica and logs), per node name. */
  dataDirs?: Record<string, string>;
  /** Wait for the guest's services to be ready (default true). */
  waitGuest?: boolean;
  log?: (msg: string) => void;
}

export interface LabConfigOptions {
  name: string;
  /** First of 6 consecutive free ports (the COLO ports); forwards use others. */
  base: number;
  qemu?: { binary?: string; accel?: 'auto' | 'kvm' | 'tcg'; allowMissingFixes?: boolean };
  memory?: string;
  /** User networking: [host port on 127.0.0.1, guest port] pairs. */
  forwards?: Array<[number, number]>;
  /** Bridge mode instead: taps per node on `bridge`. */
  tap?: { bridge: string; taps: Record<string, string>; announce?: boolean };
  /** Network namespace per node name. */
  netns?: Record<string, string>;
  /** Node addresses (default a 127.0.0.1, b 127.0.0.2). */
  addresses?: { a: string; b: string };
  /** Disk: default an image created in the config's directory. */
  disk?: string;
  /** A node's data directory (its replica and logs), per node name; default the pair's state directory's. */
  dataDirs?: Record<string, string>;
  replication?: { checkpointDelayMs?: number; compareTimeoutMs?: number; bufferDir?: string; tls?: boolean };
  /** The agents section, as in the config (written as a JSON flow mapping). */
  agents?: Record<string, unknown>;
}

/** A one-host config for the demo guest (nodes a on 127.0.0.1 and b on 127.0.0.2), as YAML. */
export function labConfigYaml(o: LabConfigOptions): string {
  const q = o.qemu ?? {};
  const b = o.base;
  const network = o.tap
    ? `{ mode: tap, bridge: ${o.tap.bridge}, taps: { ${Object.entries(o.tap.taps).map(([k, v]) => `${k}: ${v}`).join(', ')} }${o.tap.announce === false ? ', announce: false' : ''} }`
    : `{ mode: user, forwards: [${(o.forwards ?? []).map(([h, g]) => `{ port: ${h}, guestPort: ${g} }`).join(', ')}] }`;
  const node = (name: string, address: string) =>
    `  - { name: ${name}, address: ${address}${o.netns?.[name] ? `, netns: ${o.netns[name]}` : ''}${o.dataDirs?.[name] ? `, dataDir: ${JSON.stringify(o.dataDirs[name])}` : ''} }`;
  const r = o.replication ?? {};
  const repl = [
    r.checkpointDelayMs !== undefined && `checkpointDelayMs: ${r.checkpointDelayMs}`,
    r.compareTimeoutMs !== undefined && `compareTimeoutMs: ${r.compareTimeoutMs}`,
    r.bufferDir !== undefined && `bufferDir: ${JSON.stringify(r.bufferDir)}`,
    r.tls !== undefined && `tls: ${r.tls}`,
  ].filter(Boolean);
  return [
    `name: ${o.name}`,
    `qemu: { accel: ${q.accel ?? 'auto'}${q.binary ? `, binary: ${JSON.stringify(q.binary)}` : ''}${q.allowMissingFixes ? ', allowMissingFixes: true' : ''} }`,
    'vm:',
    `  memory: ${o.memory ?? '128M'}`,
    '  kernel: demo',
    `  disk: ${o.disk ?? '{ image: disk.qcow2, create: true, size: 64M }'}`,
    `  network: ${network}`,
    'nodes:',
    node('a', o.addresses?.a ?? '127.0.0.1'),
    node('b', o.addresses?.b ?? '127.0.0.2'),
    `ports: { comparePrimary: ${b}, mirror: ${b + 1}, compare: ${b + 2}, compareOut: ${b + 3}, migration: ${b + 4}, nbd: ${b + 5} }`,
    ...(repl.length ? [`replication: { ${repl.join(', ')} }`] : []),
    ...(o.agents ? [`agents: ${JSON.stringify(o.agents)}`] : []),
    '',
  ].join('\n');
}

export class OneHostPair {
  private constructor(
    readonly dir: string,
    readonly config: ResolvedConfig,
    readonly httpPort: number,
    readonly echoPort: number,
    readonly primary: PairNode,
    readonly secondary: PairNode,
    /** The guest ports forwarded from 127.0.0.1 (on the primary; on the survivor after failover). */
    readonly forwards: HostForward[],
    readonly upMs: number,
    private readonly buffers: { active: string; hidden: string },
  ) {}

  get httpBase(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  static async start(o: PairOptions = {}): Promise<OneHostPair> {
    const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-pair-'));
    fs.mkdirSync(dir, { recursive: true });
    const base = await findFreePortRange(['127.0.0.1', '127.0.0.2'], 8);
    const file = path.join(dir, 'pair.yaml');
    fs.writeFileSync(
      file,
      labConfigYaml({
        name: `lab${base}`,
        base,
        qemu: o.qemu,
        memory: o.memory,
        forwards: [
          [base + 6, 80],
          [base + 7, 7],
        ],
        replication: { checkpointDelayMs: o.checkpointDelayMs ?? 20000, compareTimeoutMs: o.compareTimeoutMs ?? 3000, bufferDir: runtimeBase(), tls: o.tls },
        dataDirs: o.dataDirs,
      }),
    );
    const config = loadConfig(file);
    o.log?.(`starting a protected pair in ${dir}`);
    let r: Awaited<ReturnType<typeof up>>;
    try {
      r = await up(config, { keepQmp: true, onStep: o.log });
    } catch (err) {
      // up ended what it started and its error says what failed; a directory of our own making goes too (tests that
      // expect the refusal, or the stock QEMU's deadlock, left one behind each run).
      if (o.dir === undefined) fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    const live = r.live!;
    const node = (role: 'primary' | 'secondary'): PairNode => {
      const st = r.state.nodes.find((n) => n.role === role)!;
      return { name: st.name, role, proc: live[role].proc, qmp: live[role].qmp, serialLog: st.serialLog, disk: st.disk, events: live[role].events };
    };
    const pair = new OneHostPair(dir, config, base + 6, base + 7, node('primary'), node('secondary'), r.state.forwards, r.state.upMs ?? 0, r.state.buffers);
    if (o.waitGuest ?? true) {
      try {
        await waitForSerial(pair.primary.serialLog, GUEST_READY_MARKER, 120_000, { alive: () => pair.primary.proc.assertRunning('while the guest booted') });
      } catch (err) {
        await pair.stop();
        throw err;
      }
      await checkpointNow(pair.primary.qmp, config.replication.checkpointDelayMs);
      o.log?.('guest services ready');
    }
    return pair;
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

  /** Ends both QEMUs (by PID) and removes the RAM-disk buffers and their directory. Keeps the directory's logs unless `removeDir`. */
  async stop(opts: { removeDir?: boolean } = {}): Promise<void> {
    for (const n of [this.primary, this.secondary]) n.qmp.destroy();
    await Promise.all([this.primary.proc.stop(2000), this.secondary.proc.stop(2000)]);
    removeBuffers([this.buffers.active, this.buffers.hidden]);
    // Their directory too, unlike a real secondary's (buffers.ts): the lab's name for it is new with every pair, and
    // each one left behind stayed in the RAM disk.
    fs.rmSync(path.dirname(this.buffers.active), { recursive: true, force: true });
    if (opts.removeDir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
