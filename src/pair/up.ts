/**
 * lockstep up: one config → a COLO-protected pair, following the COLO
 * documentation's "Startup qemu" steps 1-5. Checks first (nothing running
 * already, the image, free ports), then starts the secondary and the
 * primary, runs the QMP steps on each, and returns once both report COLO
 * running. Any failure ends what was started and says what went wrong.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ResolvedConfig } from '../config/load.js';
import { QmpClient, type QmpEvent } from '../qmp/client.js';
import { QemuProcess } from '../qemu/process.js';
import { createImage, imageInfo } from '../qemu/images.js';
import { secondaryEnterColo, primaryEnterColo, waitColoMode, firstCheckpoint } from '../colo/startup.js';
import { LockstepError } from '../util/errors.js';
import { portFree } from '../util/net.js';
import { attachTap, checkTap, detachTap } from '../qemu/tap.js';
import { planPair, type PairPlan } from './plan.js';
import { resolveRuntime } from './runtime.js';
import { readState, writeState, liveNodes, type PairState } from './state.js';
import { startAgents } from './agents.js';
import { readGeneration, writeGeneration } from './generation.js';
import { connectQmp, spawnOpts } from './launch.js';

export interface UpOptions {
  onStep?: (msg: string) => void;
  onUpdate?: (msg: string) => void;
  /** Keep the QEMUs when this process exits (the CLI); tests keep them attached. */
  detached?: boolean;
  /** Return the QMP connections (recording every event from connect on) instead of closing them. */
  keepQmp?: boolean;
  /**
   * After a failover the newest data is in the survivor's replica: copy it
   * over vm.disk.image before starting (the explicit flag `up --adopt-newest`).
   */
  adoptNewest?: boolean;
}

export interface LiveNode {
  proc: QemuProcess;
  qmp: QmpClient;
  /** Every QMP event since the connection was made. */
  events: QmpEvent[];
}

export interface UpResult {
  state: PairState;
  plan: PairPlan;
  /** With keepQmp: the processes and their open QMP connections. */
  live?: { primary: LiveNode; secondary: LiveNode };
}

function portChecks(plan: PairPlan, c: ResolvedConfig): Array<{ host: string; port: number; field: string }> {
  const e = plan.endpoints;
  // Ports inside a node's network namespace cannot be probed from here; QEMU reports them at start.
  return [
    ...(plan.primary.netns
      ? []
      : [
          { host: e.primaryHost, port: e.mirrorPort, field: 'ports.mirror' },
          { host: e.primaryHost, port: e.compareSecondaryPort, field: 'ports.compare' },
          { host: e.primaryLocal, port: e.comparePrimaryPort, field: 'ports.comparePrimary' },
          { host: e.primaryLocal, port: e.compareOutPort, field: 'ports.compareOut' },
          ...(c.vm.network.mode === 'user' ? c.vm.network.forwards.map((f, i) => ({ host: f.host, port: f.port, field: `vm.network.forwards[${i}]` })) : []),
        ]),
    ...(plan.secondary.netns
      ? []
      : [
          { host: e.secondaryHost, port: e.migrationPort, field: 'ports.migration' },
          { host: e.secondaryHost, port: e.nbdPort, field: 'ports.nbd' },
        ]),
  ];
}

/** Checks everything before anything starts; returns the disk's virtual size. */
async function preflight(c: ResolvedConfig, plan: PairPlan, step: (m: string) => void, adoptNewest: boolean): Promise<number> {
  const prev = readState(c.stateDir);
  if (prev) {
    const live = liveNodes(prev);
    if (live.length) {
      throw new LockstepError(`pair "${c.name}" is already running (${live.map((n) => `${n.name} pid ${n.pid}`).join(', ')})`, {
        hint: `see it with: lockstep status -c ${c.file}; stop it with: lockstep down -c ${c.file}`,
      });
    }
  }
  for (const [field, f] of [['vm.kernel', plan.kernel], ['vm.initrd', plan.initrd]] as const) {
    if (f && !fs.existsSync(f)) throw new LockstepError(`${field}: ${f} does not exist`, { hint: `fix ${field} in ${c.file}` });
  }
  if (prev?.authoritativeDisk && prev.authoritativeDisk !== c.vm.disk.image && fs.existsSync(prev.authoritativeDisk)) {
    const f = prev.lastFailover;
    if (!adoptNewest) {
      throw new LockstepError(
        `the newest data of pair "${c.name}" is in ${prev.authoritativeDisk}${f ? ` (node ${f.to} took over at ${f.at})` : ''}, not in ${c.vm.disk.image}`,
        {
          hint:
            `starting from ${c.vm.disk.image} would lose what was written since. To continue from the newest data: ` +
            `lockstep up --adopt-newest (copies it over ${c.vm.disk.image}); to start over from the old image anyway, ` +
            `move ${prev.authoritativeDisk} away first`,
        },
      );
    }
    step(`copying the newest disk ${prev.authoritativeDisk} over ${c.vm.disk.image}`);
    fs.copyFileSync(prev.authoritativeDisk, c.vm.disk.image);
  }
  const img = c.vm.disk.image;
  if (!fs.existsSync(img)) {
    if (!c.vm.disk.create) {
      throw new LockstepError(`the disk image ${img} (vm.disk.image) does not exist`, {
        hint: 'give the path of your VM\'s disk image, or set vm.disk.create: true and vm.disk.size to start with an empty disk',
      });
    }
    step(`creating an empty ${c.vm.disk.format} disk image ${img}`);
    fs.mkdirSync(path.dirname(img), { recursive: true });
    await createImage(img, c.vm.disk.size!, { format: c.vm.disk.format });
  }
  const info = await imageInfo(img);
  if (info.format !== c.vm.disk.format) {
    throw new LockstepError(`${img} is a ${info.format} image, but vm.disk.format says ${c.vm.disk.format}`, { hint: `set vm.disk.format: ${info.format}` });
  }
  try {
    fs.mkdirSync(c.replication.bufferDir, { recursive: true });
    fs.accessSync(c.replication.bufferDir, fs.constants.W_OK);
  } catch {
    throw new LockstepError(`replication.bufferDir ${c.replication.bufferDir} is not a writable directory`, { hint: 'point it at a RAM disk such as /dev/shm' });
  }
  for (const n of [plan.primary, plan.secondary]) if (n.tap) await checkTap(n.tap, `vm.network.taps.${n.name}`);
  for (const chk of portChecks(plan, c)) {
    if (!(await portFree(chk.host, chk.port))) {
      throw new LockstepError(`port ${chk.port} on ${chk.host} (${chk.field}) is in use`, {
        hint: `stop what uses it (ss -ltnp 'sport = :${chk.port}' shows it), or choose another port in the config`,
      });
    }
  }
  return info['virtual-size'];
}

export async function up(c: ResolvedConfig, o: UpOptions = {}): Promise<UpResult> {
  const step = o.onStep ?? (() => {});
  const t0 = Date.now();
  const rt = await resolveRuntime(c, o);
  const plan = planPair(c, rt);
  const virtualSize = await preflight(c, plan, step, o.adoptNewest === true);
  for (const n of [plan.primary, plan.secondary]) {
    fs.mkdirSync(n.dataDir, { recursive: true });
    for (const f of [n.qmpSocket, n.qmpSocket2, n.serialLog, n.qemuLog]) fs.rmSync(f, { force: true });
  }
  step(`copying the disk to the secondary's replica (${plan.secondary.disk})`);
  fs.copyFileSync(c.vm.disk.image, plan.secondary.disk);
  for (const b of [plan.buffers.active, plan.buffers.hidden]) await createImage(b, virtualSize, { overwrite: true });

  if (plan.primary.tap && plan.secondary.tap) {
    step(`bridge ${plan.primary.tap.bridge}: ${plan.primary.tap.tap} (primary) on it, ${plan.secondary.tap.tap} (secondary) off it`);
    await detachTap(plan.secondary.tap);
    await attachTap(plan.primary.tap);
  }
  const started: QemuProcess[] = [];
  const clients: QmpClient[] = [];
  const cleanup = async () => {
    for (const q of clients) q.destroy();
    await Promise.all(started.map((p) => p.stop(2000)));
    for (const b of [plan.buffers.active, plan.buffers.hidden]) fs.rmSync(b, { force: true });
  };
  try {
    step(`starting the secondary on ${plan.secondary.name} (${rt.accel.toUpperCase()})`);
    const sProc = new QemuProcess({ ...spawnOpts(plan.secondary), name: `secondary ${plan.secondary.name}`, binary: rt.binary, logFile: plan.secondary.qemuLog, detached: o.detached });
    started.push(sProc);
    step(`starting the primary on ${plan.primary.name}`);
    const pProc = new QemuProcess({ ...spawnOpts(plan.primary), name: `primary ${plan.primary.name}`, binary: rt.binary, logFile: plan.primary.qemuLog, detached: o.detached });
    started.push(pProc);

    step('secondary: x-colo, NBD export of the replica (step 3)');
    const sConn = await connectQmp(sProc, plan.secondary, 15_000);
    const sQmp = sConn.qmp;
    clients.push(sQmp);
    await secondaryEnterColo(sQmp, { nbdHost: plan.endpoints.secondaryHost, nbdPort: plan.endpoints.nbdPort }, (n) => o.onUpdate?.(n));
    step('primary: replication child, x-colo, migrate (step 4)');
    const pConn = await connectQmp(pProc, plan.primary, 15_000);
    const pQmp = pConn.qmp;
    clients.push(pQmp);
    await primaryEnterColo(pQmp, { secondaryHost: plan.endpoints.secondaryHost, nbdPort: plan.endpoints.nbdPort, migrationPort: plan.endpoints.migrationPort }, (n) =>
      o.onUpdate?.(n),
    );
    step('waiting for both nodes to report COLO running');
    await Promise.all([waitColoMode(pQmp, 'primary', 30_000), waitColoMode(sQmp, 'secondary', 30_000)]);
    // Protected means checkpoints work: set the period (QEMU 7.2 also takes a
    // checkpoint at once) and see the first one complete on the primary.
    step('first checkpoint');
    try {
      await firstCheckpoint(pQmp, c.replication.checkpointDelayMs);
    } catch {
      throw new LockstepError(`the first COLO checkpoint did not complete: the primary on ${plan.primary.name} stopped and did not resume`, {
        hint:
          rt.accel === 'tcg'
            ? 'QEMU 7.2 hangs in COLO checkpoints under TCG unless patched; leave qemu.binary unset so lockstep uses its lab QEMU (lockstep lab prepare)'
            : `see ${plan.primary.qemuLog}`,
      });
    }
    const now = new Date();
    const state: PairState = {
      version: 1,
      name: c.name,
      configFile: c.file,
      runtime: rt,
      endpoints: plan.endpoints,
      forwards: plan.forwards,
      buffers: plan.buffers,
      nodes: [plan.primary, plan.secondary].map((n, i) => ({
        name: n.name,
        role: n.role,
        address: n.address,
        pid: (i === 0 ? pProc : sProc).pid,
        qmpSocket: n.qmpSocket,
        qmpSocket2: n.qmpSocket2,
        serialLog: n.serialLog,
        qemuLog: n.qemuLog,
        disk: n.disk,
        netns: n.netns,
        tap: n.tap,
      })),
      startedAt: new Date(t0).toISOString(),
      protectedAt: now.toISOString(),
      upMs: now.getTime() - t0,
    };
    writeState(c.stateDir, state);
    // Both disks now hold the same data: one new generation, above anything either held before.
    const gen = Math.max(...[plan.primary, plan.secondary].map((n) => readGeneration(n.dataDir).generation)) + 1;
    const run = crypto.randomUUID();
    for (const n of [plan.primary, plan.secondary]) writeGeneration(n.dataDir, gen, `up: ${n.role}`, run);
    if (o.keepQmp) {
      return { state, plan, live: { primary: { proc: pProc, ...pConn }, secondary: { proc: sProc, ...sConn } } };
    }
    for (const q of clients) await q.close(); // the agents take the QMP monitors over
    if (c.agents) {
      step('starting the node agents (heartbeat, failure detection, automatic failover)');
      state.agents = await startAgents(c, state);
      writeState(c.stateDir, state);
    }
    return { state, plan };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
