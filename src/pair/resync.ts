/**
 * lockstep resync: after a failover the VM runs alone on the survivor. This
 * starts a new secondary on the other node (fresh replica and active/hidden
 * buffers, "Startup qemu" steps 2 and 3), mirrors the survivor's disk to it
 * and re-enters COLO ("Primary/Secondary resume replication"), then records
 * the pair as protected again, with the survivor as its primary.
 *
 * Never the wrong way: the source is the node that runs the VM, and its disk
 * generation must not be lower than the target's. The target's old disk is
 * not read: it is replaced by a new replica in the target's data directory
 * (the user's image is never written).
 *
 * A failure at any step leaves the survivor running alone, as before, and
 * nothing else: the new secondary is ended and the survivor's half-done
 * resume is taken back (abortResume), so a retry starts clean.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ResolvedConfig } from '../config/load.js';
import { QmpClient } from '../qmp/client.js';
import { QemuProcess, isOurQemu, stopPid } from '../qemu/process.js';
import { createImage, imageInfo } from '../qemu/images.js';
import { detachTap } from '../qemu/tap.js';
import { secondaryEnterColo, waitColoMode, firstCheckpoint, queryColoStatus } from '../colo/startup.js';
import { resumeReplication, abortResume, type MirrorProgress } from '../colo/resume.js';
import { LockstepError, errorMessage } from '../util/errors.js';
import { planPair } from './plan.js';
import { connectQmp, spawnOpts } from './up.js';
import { readState, writeState, type PairState } from './state.js';
import { agentsRunning, startAgents, stopAgents } from './agents.js';
import { readGeneration, writeGeneration } from './generation.js';

export interface ResyncOptions {
  onStep?: (msg: string) => void;
  onUpdate?: (msg: string) => void;
  onMirror?: (p: MirrorProgress) => void;
}

export interface ResyncResult {
  from: string;
  to: string;
  /** Whole resync: command → protected again. */
  ms: number;
  mirrorMs: number;
  mirrorBytes: number;
  /** How long the VM was stopped for the switch into COLO. */
  stoppedMs: number;
  generation: number;
}

export async function resync(c: ResolvedConfig, o: ResyncOptions = {}): Promise<ResyncResult> {
  const step = o.onStep ?? (() => {});
  const t0 = performance.now();
  const s = readState(c.stateDir);
  if (!s) throw new LockstepError(`pair "${c.name}" has not been started`, { hint: `start it with: lockstep up -c ${c.file}` });
  const source = s.nodes.find((n) => n.role === 'primary')!;
  const target = s.nodes.find((n) => n !== source)!;
  if (!isOurQemu(source.pid, source.qmpSocket)) {
    throw new LockstepError(`the VM is not running on ${source.name}: there is nothing to resync from`, { hint: `see lockstep status -c ${c.file}` });
  }
  const srcGen = readGeneration(path.dirname(source.qmpSocket));
  const tgtGen = readGeneration(path.dirname(target.qmpSocket));
  if (tgtGen.generation > srcGen.generation) {
    throw new LockstepError(
      `node ${target.name} holds newer data (disk generation ${tgtGen.generation}) than ${source.name}, which runs the VM (generation ${srcGen.generation}): resyncing would overwrite it`,
      { hint: `find out why ${source.name} runs the VM; lockstep status -c ${c.file} and the agent logs in ${c.stateDir} tell` },
    );
  }
  let qmp = await QmpClient.connect(source.qmpSocket2, { timeoutMs: 5000 });
  try {
    const colo = await queryColoStatus(qmp);
    if (colo.mode !== 'none') {
      throw new LockstepError(`pair "${c.name}" is in COLO already (${source.name} is ${colo.mode})`, { hint: 'nothing to resync' });
    }
  } finally {
    qmp.destroy();
  }

  const hadAgents = agentsRunning(s);
  if (hadAgents) {
    // The agents would take the resync's stop, new QEMU and migration for failures.
    step('pausing the node agents for the resync');
    await stopAgents(s);
  }
  if (isOurQemu(target.pid, target.qmpSocket)) {
    step(`ending the stale QEMU on ${target.name} (pid ${target.pid}): its disk is replaced`);
    await stopPid(target.pid, target.qmpSocket, 2000);
  }
  const plan = planPair(c, s.runtime, source.name);
  const tp = plan.secondary;
  fs.mkdirSync(tp.dataDir, { recursive: true });
  for (const f of [tp.qmpSocket, tp.qmpSocket2, tp.serialLog]) fs.rmSync(f, { force: true });
  const size = (await imageInfo(source.disk))['virtual-size'];
  step(`new replica and buffers for ${tp.name} (${(size / 2 ** 20).toFixed(0)} MiB disk)`);
  await createImage(tp.disk, size, { format: c.vm.disk.format, overwrite: true });
  for (const b of [plan.buffers.active, plan.buffers.hidden]) await createImage(b, size, { overwrite: true });
  if (tp.tap) await detachTap(tp.tap);

  let proc: QemuProcess | undefined;
  let tq: QmpClient | undefined;
  qmp = await QmpClient.connect(source.qmpSocket, { timeoutMs: 5000 });
  try {
    step(`starting a new secondary on ${tp.name}`);
    proc = new QemuProcess({ ...spawnOpts(tp), name: `secondary ${tp.name}`, binary: s.runtime.binary, logFile: tp.qemuLog, detached: true });
    tq = (await connectQmp(proc, tp, 15_000)).qmp;
    await secondaryEnterColo(tq, { nbdHost: plan.endpoints.secondaryHost, nbdPort: plan.endpoints.nbdPort }, (n) => o.onUpdate?.(n));
    step(`${source.name}: mirroring its disk to ${tp.name}, then into COLO`);
    const r = await resumeReplication(
      qmp,
      plan.endpoints,
      { host: plan.endpoints.secondaryHost, nbdPort: plan.endpoints.nbdPort, migrationPort: plan.endpoints.migrationPort },
      { onStep: (n) => o.onUpdate?.(n), onMirror: o.onMirror, mirrorTimeoutMs: c.replication.resyncTimeoutMs, migrationTimeoutMs: 60_000 },
    );
    step('waiting for both nodes to report COLO running');
    await Promise.all([waitColoMode(qmp, 'primary', 30_000), waitColoMode(tq, 'secondary', 30_000)]);
    step('first checkpoint');
    await firstCheckpoint(qmp, c.replication.checkpointDelayMs);
    const g = writeGeneration(tp.dataDir, srcGen.generation, `resync from ${source.name}`);
    const now = new Date();
    const next: PairState = {
      ...s,
      endpoints: plan.endpoints,
      buffers: plan.buffers,
      retiredBuffers: [...(s.retiredBuffers ?? []), s.buffers.active, s.buffers.hidden].filter((b) => b !== plan.buffers.active && b !== plan.buffers.hidden),
      nodes: s.nodes.map((n) =>
        n === target ? { ...n, role: 'secondary' as const, pid: proc!.pid, disk: tp.disk, serialLog: tp.serialLog, qemuLog: tp.qemuLog } : { ...n, role: 'primary' as const },
      ),
      protectedAt: now.toISOString(),
      lastResync: { at: now.toISOString(), from: source.name, to: tp.name, ms: performance.now() - t0, mirrorMs: r.mirrorMs, mirrorBytes: r.mirrorBytes, stoppedMs: r.stoppedMs },
    };
    writeState(c.stateDir, next);
    const result = { from: source.name, to: tp.name, ms: performance.now() - t0, mirrorMs: r.mirrorMs, mirrorBytes: r.mirrorBytes, stoppedMs: r.stoppedMs, generation: g.generation };
    qmp.destroy();
    tq.destroy();
    if (c.agents) {
      step('starting the node agents again');
      next.agents = await startAgents(c, next);
      writeState(c.stateDir, next);
    }
    return result;
  } catch (err) {
    step(`resync failed (${errorMessage(err)}): taking it back, the VM runs on alone on ${source.name}`);
    const undone = await abortResume(qmp).catch(() => []);
    if (undone.length) step(`${source.name}: undid ${undone.join(', ')}`);
    tq?.destroy();
    await proc?.stop(2000);
    for (const b of [plan.buffers.active, plan.buffers.hidden]) fs.rmSync(b, { force: true });
    qmp.destroy();
    if (hadAgents) {
      const again = readState(c.stateDir)!;
      again.agents = await startAgents(c, again).catch(() => undefined);
      writeState(c.stateDir, again);
    }
    throw err;
  }
}
