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
import { createBuffers, removeBuffers } from './buffers.js';
import { ensurePrivateDir } from '../util/files.js';
import { secondaryEnterColo, primaryEnterColo, waitColoMode, firstCheckpoint } from '../colo/startup.js';
import { LockstepError } from '../util/errors.js';
import { portFree } from '../util/net.js';
import { attachTap, checkTap, detachTap } from '../qemu/tap.js';
import { planPair, replicaPath, type PairPlan } from './plan.js';
import { resolveRuntime } from './runtime.js';
import { stateFile, writeState, liveNodes, newPairState, nodeStateOf, type PairState } from './state.js';
import { startAgents, waitAgentsProtected } from './agents.js';
import { generationFile, readDiskRecord, readEpoch, writeEpoch, type ReadDisk } from './generation.js';
import { compareEpochs, formatEpoch, type Epoch, type EpochOrder } from './epoch.js';
import { connectQmp, spawnOpts } from './launch.js';
import { prepareDataPlaneKey } from './keys.js';

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

/**
 * The pair's state file, read strictly: undefined only when there is none.
 * One that exists but cannot be read or parsed is an error: it may be what
 * says where the newest data is, and `up` does not guess.
 */
export function readStateStrict(c: ResolvedConfig): PairState | undefined {
  const file = stateFile(c.stateDir);
  let why: string;
  try {
    const parsed: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (typeof parsed === 'object' && parsed !== null && Array.isArray((parsed as { nodes?: unknown }).nodes)) return parsed as PairState;
    why = 'it is not a state of a pair (no "nodes" list)';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    why = err instanceof SyntaxError ? `it is not valid JSON: ${err.message}` : (err as Error).message;
  }
  throw new LockstepError(`the state file of pair "${c.name}", ${file}, exists but cannot be read: ${why}`, {
    hint:
      `it records whether the pair runs and which disk holds the newest data, so lockstep up does not start without it. ` +
      `Inspect it (cat ${file}); if it is damaged, move it away (mv ${file} ${file}.damaged) and run lockstep up again: ` +
      `up then goes by the disk epochs recorded next to the disks (${c.nodes.map((n) => generationFile(n.dataDir)).join(', ')})`,
  });
}

function describeRecord(r: ReadDisk): string {
  if (r.state === 'ok') return `epoch ${formatEpoch(r.record.epoch)} of run ${r.record.epoch.run}`;
  return r.state === 'missing' ? 'no epoch (no record)' : `no readable epoch (damaged record: ${r.error})`;
}

function epochOf(r: ReadDisk): Epoch | undefined {
  return r.state === 'ok' ? r.record.epoch : undefined;
}

export interface DiskFacts {
  /** vm.disk.image: the primary's (first node's) disk, which `up` copies over the replica. */
  image: string;
  /** The secondary's replica, which `up` overwrites. */
  replica: string;
  replicaExists: boolean;
  /** The first node's record; it describes `image`, or `firstReplica` when that is set. */
  imageRecord: ReadDisk;
  imageRecordFile: string;
  /** The secondary node's record: it describes the replica. */
  replicaRecord: ReadDisk;
  replicaRecordFile: string;
  /**
   * The first node's own replica, when it exists and was written after the
   * image: the first node was a resync target once and last ran from it, so
   * its record describes that disk and the image is older.
   */
  firstReplica?: string;
  /** The disk state.json names as holding the newest data, when it is not the image and exists. */
  authoritative?: { disk: string; why: string };
  adoptNewest: boolean;
  /** For hints: the config file. */
  configFile: string;
  /** The pair's name, for messages. */
  pairName: string;
}

/** What `up` does with the disks before it starts: copy `adopt.from` over the image first, or nothing. */
export interface DiskDecision {
  adopt?: { from: string; epoch: Epoch | undefined };
}

const ORDER_WORDS: Record<EpochOrder, string> = {
  same: 'the same data',
  newer: 'newer',
  older: 'older',
  divergent: 'divergent: both wrote alone in the same generation, neither may overwrite the other',
  'other-run': 'from different runs of the pair: they cannot be compared',
  unknown: 'not comparable: one epoch is unknown',
};

/**
 * Whether `up` may copy the image over the replica, and what to adopt first.
 * Pure: decides from `f`, throws LockstepError when it must refuse.
 *
 * The replica is never overwritten unless its data is provably not newer
 * than the image's: its epoch is the same or older, or there is nothing to
 * lose (no replica file; no records at all, i.e. the first `up`). A newer
 * replica (or a first node that last ran from its own replica) is adopted
 * with `adoptNewest` (copied over the image first) and refused otherwise.
 * When neither disk is provably newer (divergent, other runs, an unknown
 * epoch), it refuses even with `adoptNewest`: that needs a person's choice.
 */
export function decideDisks(f: DiskFacts): DiskDecision {
  const A = f.imageRecord;
  const B = f.replicaRecord;
  const aDisk = f.firstReplica ?? f.image;
  const recordOf = (disk: string): ReadDisk | undefined => (disk === f.replica ? B : disk === aDisk ? A : undefined);
  const adoptHint = (from: string) => `lockstep up --adopt-newest -c ${f.configFile} copies ${from} over ${f.image} first and starts from it`;
  const ambiguous = (what: string) =>
    new LockstepError(`cannot tell which disk holds the newest data of pair "${f.pairName}": ${what}`, {
      hint:
        `nothing was changed, and --adopt-newest cannot choose either, as neither disk is provably newer. Decide which data to keep: ` +
        `to start from ${f.image} (losing what only the replica holds), move ${f.replica} away; ` +
        `to keep the replica's data, copy it over the image (cp ${f.replica} ${f.image}) and move both records (${f.imageRecordFile}, ${f.replicaRecordFile}) away; ` +
        `then run lockstep up again`,
    });

  let adopt: string | undefined;
  if (f.authoritative) {
    if (!f.adoptNewest) {
      throw new LockstepError(`the newest data of pair "${f.pairName}" is in ${f.authoritative.disk}${f.authoritative.why}, not in ${f.image}`, {
        hint:
          `starting from ${f.image} would lose what was written since. To continue from the newest data: ` +
          `${adoptHint(f.authoritative.disk)}; to start over from the old image anyway, move ${f.authoritative.disk} away first`,
      });
    }
    adopt = f.authoritative.disk;
  } else {
    if (A.state === 'missing' && B.state === 'missing') return {}; // the first `up`: nothing recorded, nothing to lose
    if (!f.firstReplica) {
      if (!f.replicaExists) return {}; // nothing to overwrite
      const order = compareEpochs(epochOf(B), epochOf(A)); // the replica relative to the image
      if (order === 'same' || order === 'older') return {};
      const both = `${f.image} has ${describeRecord(A)} (${f.imageRecordFile}); the replica ${f.replica} has ${describeRecord(B)} (${f.replicaRecordFile})`;
      if (order !== 'newer') throw ambiguous(`${both}: they are ${ORDER_WORDS[order]}`);
      if (!f.adoptNewest) {
        throw new LockstepError(`the replica ${f.replica} holds newer data than ${f.image} (${both}): starting would copy the image over it and lose what was written since`, {
          hint: `nothing was changed. ${adoptHint(f.replica)}; to start over from the old image anyway, move ${f.replica} away first`,
        });
      }
      adopt = f.replica;
    } else {
      // The first node last ran from its own replica: the image is older than that, and its record is that replica's.
      const fr = f.firstReplica;
      const both = `the first node last ran from ${fr} (${describeRecord(A)}, ${f.imageRecordFile}), written after ${f.image}; the replica ${f.replica} has ${describeRecord(B)} (${f.replicaRecordFile})`;
      let newest: string;
      if (!f.replicaExists) {
        if (A.state !== 'ok') throw ambiguous(both);
        newest = fr;
      } else {
        const order = compareEpochs(epochOf(A), epochOf(B));
        // The same data in both: the second node's disk, which its primary wrote directly (the first node's was its NBD copy).
        if (order === 'newer') newest = fr;
        else if (order === 'older' || order === 'same') newest = f.replica;
        else throw ambiguous(`${both}: they are ${ORDER_WORDS[order]}`);
      }
      if (!f.adoptNewest) {
        throw new LockstepError(`${f.image} does not hold the newest data of pair "${f.pairName}": ${both}`, {
          hint: `nothing was changed. ${adoptHint(newest)}; to start over from the old image anyway, move ${fr}${newest === f.replica ? ` and ${f.replica}` : ''} away first`,
        });
      }
      adopt = newest;
    }
  }

  // The image will hold `adopt`'s data: the replica must not be newer than that either.
  const adopted = recordOf(adopt);
  if (adopt !== f.replica && f.replicaExists && adopted?.state === 'ok' && B.state === 'ok') {
    const order = compareEpochs(B.record.epoch, adopted.record.epoch);
    if (order !== 'same' && order !== 'older') {
      throw ambiguous(`${adopt} (to be adopted) has ${describeRecord(adopted)}; the replica ${f.replica} has ${describeRecord(B)}: the replica is ${ORDER_WORDS[order]}`);
    }
  }
  return { adopt: { from: adopt, epoch: adopted ? epochOf(adopted) : undefined } };
}

/**
 * The disk part of `up`'s checks, before anything is started or copied over
 * the replica: reads state.json strictly and the epochs next to both disks
 * (decideDisks), and with `adoptNewest` copies the newest disk over the
 * image (recording its epoch as the image's). Throws when `up` must not go
 * on. Returns what it adopted.
 */
export function checkDisksBeforeUp(c: ResolvedConfig, plan: PairPlan, o: { adoptNewest?: boolean; step?: (m: string) => void } = {}): DiskDecision {
  const prev = readStateStrict(c);
  const image = c.vm.disk.image;
  const firstNode = c.nodes.find((n) => n.name === plan.primary.name)!;
  const firstReplica = replicaPath(c, firstNode);
  const mtime = (f: string) => fs.statSync(f, { throwIfNoEntry: false })?.mtimeMs;
  const frTime = mtime(firstReplica);
  const imgTime = mtime(image);
  const auth = prev?.authoritativeDisk;
  const f = prev?.lastFailover;
  const d = decideDisks({
    image,
    replica: plan.secondary.disk,
    replicaExists: fs.existsSync(plan.secondary.disk),
    imageRecord: readDiskRecord(plan.primary.dataDir),
    imageRecordFile: generationFile(plan.primary.dataDir),
    replicaRecord: readDiskRecord(plan.secondary.dataDir),
    replicaRecordFile: generationFile(plan.secondary.dataDir),
    firstReplica: frTime !== undefined && (imgTime === undefined || frTime > imgTime) ? firstReplica : undefined,
    authoritative: auth && auth !== image && fs.existsSync(auth) ? { disk: auth, why: f ? ` (node ${f.to} took over at ${f.at})` : '' } : undefined,
    adoptNewest: o.adoptNewest === true,
    configFile: c.file,
    pairName: c.name,
  });
  if (d.adopt) {
    o.step?.(`copying the newest disk ${d.adopt.from} over ${image}`);
    fs.mkdirSync(path.dirname(image), { recursive: true });
    fs.copyFileSync(d.adopt.from, image);
    if (d.adopt.epoch) writeEpoch(plan.primary.dataDir, d.adopt.epoch, `up --adopt-newest: ${image} is a copy of ${d.adopt.from}`);
  }
  return d;
}

/** Checks everything before anything starts; returns the disk's virtual size. */
async function preflight(c: ResolvedConfig, plan: PairPlan, step: (m: string) => void, adoptNewest: boolean): Promise<number> {
  const prev = readStateStrict(c);
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
  checkDisksBeforeUp(c, plan, { adoptNewest, step });
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
    ensurePrivateDir(n.dataDir, { parents: true });
    for (const f of [n.qmpSocket, n.qmpSocket2, n.serialLog, n.qemuLog, ...n.localSockets]) fs.rmSync(f, { force: true });
  }
  step(`copying the disk to the secondary's replica (${plan.secondary.disk})`);
  fs.copyFileSync(c.vm.disk.image, plan.secondary.disk);
  await createBuffers(plan.buffers, virtualSize);

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
    removeBuffers([plan.buffers.active, plan.buffers.hidden]);
  };
  try {
    prepareDataPlaneKey(c);
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
    await secondaryEnterColo(sQmp, { nbdHost: plan.endpoints.secondaryHost, nbdPort: plan.endpoints.nbdPort, tls: plan.endpoints.tls }, (n) => o.onUpdate?.(n));
    step('primary: replication child, x-colo, migrate (step 4)');
    const pConn = await connectQmp(pProc, plan.primary, 15_000);
    const pQmp = pConn.qmp;
    clients.push(pQmp);
    await primaryEnterColo(pQmp, { secondaryHost: plan.endpoints.secondaryHost, nbdPort: plan.endpoints.nbdPort, migrationPort: plan.endpoints.migrationPort, tls: plan.endpoints.tls }, (n) =>
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
      const what = pProc.running ? 'stopped and did not resume' : `exited: ${pProc.logTail(1)}`;
      throw new LockstepError(`the first COLO checkpoint did not complete: the primary on ${plan.primary.name} ${what}`, {
        hint:
          rt.accel === 'tcg'
            ? "without lockstep's fix P1, QEMU hangs (7.2-10.1) or aborts (10.2 and later) in COLO checkpoints under TCG: leave qemu.binary unset " +
              "so lockstep uses its own QEMU, or install its package (lockstep qemu package); lockstep qemu info shows a binary's fixes"
            : `see ${plan.primary.qemuLog}`,
      });
    }
    const now = new Date();
    const state: PairState = {
      ...newPairState(c, rt, plan, [nodeStateOf(plan.primary, pProc.pid), nodeStateOf(plan.secondary, sProc.pid)], new Date(t0)),
      protectedAt: now.toISOString(),
      upMs: now.getTime() - t0,
    };
    writeState(c.stateDir, state);
    // Both disks now hold the same data: one new epoch of a new run, above any generation either held before.
    const gens = [plan.primary, plan.secondary].map((n) => readEpoch(n.dataDir)?.gen).filter((g): g is number => g !== undefined);
    const epoch: Epoch = { run: crypto.randomUUID(), gen: Math.max(0, ...gens) + 1, by: 'up' };
    for (const n of [plan.primary, plan.secondary]) writeEpoch(n.dataDir, epoch, `up: ${n.role}`);
    if (o.keepQmp) {
      return { state, plan, live: { primary: { proc: pProc, ...pConn }, secondary: { proc: sProc, ...sConn } } };
    }
    for (const q of clients) await q.close(); // the agents take the QMP monitors over
    if (c.agents) {
      step('starting the node agents (heartbeat, failure detection, automatic failover)');
      state.agents = await startAgents(c, state);
      writeState(c.stateDir, state);
      // Protected, as status will say it, once the agents have seen a checkpoint of their own.
      step('waiting for the agents to see a checkpoint');
      if (!(await waitAgentsProtected(state, 2 * c.replication.checkpointDelayMs + 10_000))) {
        step(`the agents do not say protected yet: see lockstep status -c ${c.file} and ${c.stateDir}/*/agent.log`);
      }
    }
    return { state, plan };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
