/**
 * The COLO procedures are sequences of QMP commands. Each runs as a named,
 * time-bounded step; a failure says which procedure and which step failed,
 * with QEMU's own error, and how far the procedure got.
 *
 * Procedures resume: a caller that recorded how many steps were done
 * (ColoStepError.stepsDone, or onProgress) runs the same list again with
 * `fromStep` and continues there. For that, steps are safe to run again:
 * a step may have taken effect although its reply was lost (a QMP timeout),
 * so a step whose repetition would fail or do harm has a `done` check that
 * asks QEMU whether its effect is already there; runSteps then skips it and
 * counts it as done. The helpers at the end of this file are those checks.
 *
 * A step list must be built from the same options for `fromStep` to mean the
 * same step again (the builders in failover.ts, resume.ts and startup.ts
 * are deterministic for given options).
 */
import type { QmpCommands } from '../qmp/client.js';
import { LockstepError, describeError } from '../util/errors.js';
import { withTimeout } from '../util/time.js';

export interface Step {
  name: string;
  /** The bound for the whole step: its `done` check and its `run`. */
  timeoutMs: number;
  run: () => Promise<unknown>;
  /**
   * Whether QEMU already shows this step's effect (it ran before, perhaps
   * with its reply lost). True: the step is not run again and counts as
   * done. A check that fails fails the step (QEMU could not be asked, and
   * the step itself would not get further).
   */
  done?: () => Promise<boolean>;
}

export interface StepRecord {
  name: string;
  /** The step's position in the procedure's list (0-based). */
  index: number;
  ms: number;
  /** Its `done` check found its effect already there, so it was not run. */
  alreadyDone?: boolean;
}

export interface RunStepsOptions {
  /** Start at this step (0-based): the ones before it are done already. Default 0. */
  fromStep?: number;
  /** Before each step that is attempted. */
  onStep?: (name: string, index: number, total: number) => void;
  /** After each step that is done (run, or found done): how many steps are done now. */
  onProgress?: (stepsDone: number) => void;
}

export class ColoStepError extends LockstepError {
  constructor(
    readonly procedure: string,
    /** The failing step's name. */
    readonly step: string,
    /** The failing step's position (0-based). */
    readonly stepIndex: number,
    /** How many steps are done: where a retry starts (`fromStep`). Equals stepIndex. */
    readonly stepsDone: number,
    /** How many steps the procedure has. */
    readonly total: number,
    cause: unknown,
  ) {
    super(`${procedure}: step ${stepIndex + 1}/${total} "${step}" failed: ${describeError(cause)}`, {
      cause,
      hint: 'the QEMU logs and `lockstep status` show the state each node was left in',
    });
    this.name = 'ColoStepError';
  }
}

/**
 * Runs `steps[fromStep..]` in order, each bounded by its timeout. Returns
 * a record per step attempted; throws ColoStepError at the first failure.
 */
export async function runSteps(procedure: string, steps: Step[], o: RunStepsOptions = {}): Promise<StepRecord[]> {
  const from = o.fromStep ?? 0;
  if (!Number.isInteger(from) || from < 0 || from > steps.length) {
    throw new LockstepError(`${procedure}: cannot start at step ${from}: the procedure has ${steps.length} steps (0 to ${steps.length} done)`);
  }
  const records: StepRecord[] = [];
  for (let i = from; i < steps.length; i++) {
    const s = steps[i]!;
    o.onStep?.(s.name, i, steps.length);
    const t0 = performance.now();
    let already = false;
    try {
      already = await withTimeout(
        (async () => {
          if (s.done) {
            let isDone: boolean;
            try {
              isDone = await s.done();
            } catch (err) {
              throw new LockstepError(`could not ask QEMU whether it was done already: ${describeError(err)}`, { cause: err });
            }
            if (isDone) return true;
          }
          await s.run();
          return false;
        })(),
        s.timeoutMs,
        `${procedure}: ${s.name}`,
      );
    } catch (err) {
      throw new ColoStepError(procedure, s.name, i, i, steps.length, err);
    }
    records.push({ name: s.name, index: i, ms: performance.now() - t0, ...(already ? { alreadyDone: true } : {}) });
    o.onProgress?.(i + 1);
  }
  return records;
}

// ---------------------------------------------------------------------------
// What QEMU already did: the checks behind `done`. Each is one query.

const CHECK_MS = 5_000;

/** Whether a QOM object with this id exists under /objects (object-add / object-del). */
export async function hasObject(qmp: QmpCommands, id: string): Promise<boolean> {
  const list = await qmp.execute<Array<{ name: string }>>('qom-list', { path: '/objects' }, { timeoutMs: CHECK_MS });
  return list.some((o) => o.name === id);
}

/** Whether a chardev with this id exists (chardev-add / chardev-remove). */
export async function hasChardev(qmp: QmpCommands, id: string): Promise<boolean> {
  const list = await qmp.execute<Array<{ label: string }>>('query-chardev', undefined, { timeoutMs: CHECK_MS });
  return list.some((c) => c.label === id);
}

/** Whether a block node with this node-name exists (drive_add -n / drive_del). */
export async function hasBlockNode(qmp: QmpCommands, nodeName: string): Promise<boolean> {
  const nodes = await qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true }, { timeoutMs: CHECK_MS });
  return nodes.some((n) => n['node-name'] === nodeName);
}

interface BlockGraph {
  nodes: Array<{ id: number; type: string; name: string }>;
  edges: Array<{ parent: number; child: number; name: string }>;
}

/**
 * The quorum children (`children.N`) of the disk behind block backend
 * `backend` (colo-disk0), with the node-names they point at, from
 * x-debug-query-block-graph (QEMU >= 4.0). The quorum is the first node
 * below the backend that has such children (a drive-mirror puts a filter
 * node above it while it runs). Throws when the graph cannot be read or
 * the backend is not in it.
 */
export async function quorumChildren(qmp: QmpCommands, backend: string): Promise<Array<{ edge: string; node: string }>> {
  const g = await qmp.execute<BlockGraph>('x-debug-query-block-graph', undefined, { timeoutMs: CHECK_MS });
  const blk = g.nodes.find((n) => n.type === 'block-backend' && n.name === backend);
  if (!blk) throw new LockstepError(`the block graph has no backend ${backend}`);
  const byId = new Map(g.nodes.map((n) => [n.id, n.name]));
  const seen = new Set<number>([blk.id]);
  const queue = [blk.id];
  while (queue.length) {
    const id = queue.shift()!;
    const out = g.edges.filter((e) => e.parent === id);
    const children = out.filter((e) => /^children\.\d+$/.test(e.name));
    if (children.length) return children.map((e) => ({ edge: e.name, node: byId.get(e.child) ?? '' }));
    for (const e of out) {
      if (!seen.has(e.child)) {
        seen.add(e.child);
        queue.push(e.child);
      }
    }
  }
  return [];
}

/** Whether node `nodeName` is a quorum child of backend `backend`'s disk (x-blockdev-change attach / remove). */
export async function isQuorumChild(qmp: QmpCommands, backend: string, nodeName: string): Promise<boolean> {
  return (await quorumChildren(qmp, backend)).some((c) => c.node === nodeName);
}

/** Whether a migration capability is on (migrate-set-capabilities). */
export async function capabilityOn(qmp: QmpCommands, capability: string): Promise<boolean> {
  const caps = await qmp.execute<Array<{ capability: string; state: boolean }>>('query-migrate-capabilities', undefined, { timeoutMs: CHECK_MS });
  return caps.some((c) => c.capability === capability && c.state);
}

export interface UsernetForward {
  proto: 'tcp' | 'udp';
  /** '*' for any address (0.0.0.0). */
  hostAddr: string;
  hostPort: number;
  guestAddr: string;
  guestPort: number;
}

/**
 * The host forwards of user-mode netdev `netdev` in the text of HMP `info
 * usernet`. QEMU 7.2 prints one section per user-mode netdev, headed
 * `Hub <n> (<netdev>):`, followed by libslirp's connection table
 * (slirp_connection_info, libslirp 4.x), whose forward lines are
 *   `  TCP[HOST_FORWARD]  <fd> <host addr> <host port> <guest addr> <guest port> <recvq> <sendq>`
 * with `*` as the host address of a forward bound to any address. Returns
 * undefined when the netdev has no section (a format this does not know:
 * then nothing can be concluded).
 */
export function parseUsernetForwards(text: string, netdev: string): UsernetForward[] | undefined {
  let inSection = false;
  let found = false;
  const out: UsernetForward[] = [];
  for (const line of text.split(/\r?\n/)) {
    const hub = /^Hub -?\d+ \((.*)\):\s*$/.exec(line);
    if (hub) {
      inSection = hub[1] === netdev;
      found ||= inSection;
      continue;
    }
    if (!inSection) continue;
    const t = line.trim().split(/\s+/);
    const kind = /^(TCP|UDP)\[HOST_FORWARD\]$/.exec(t[0] ?? '');
    if (!kind || t.length < 6) continue;
    const hostPort = Number(t[3]);
    const guestPort = Number(t[5]);
    if (!Number.isInteger(hostPort) || !Number.isInteger(guestPort)) continue;
    out.push({ proto: kind[1] === 'TCP' ? 'tcp' : 'udp', hostAddr: t[2]!, hostPort, guestAddr: t[4]!, guestPort });
  }
  return found ? out : undefined;
}

/**
 * Whether user-mode netdev `netdev` already forwards `proto hostAddr:hostPort`
 * to guest port `guestPort` (hostfwd_add). False when `info usernet` cannot
 * be understood: the step then runs, and QEMU's own answer decides.
 */
export async function hasHostForward(
  qmp: QmpCommands,
  netdev: string,
  f: { proto?: 'tcp' | 'udp'; hostAddr: string; hostPort: number; guestPort: number },
): Promise<boolean> {
  const text = await qmp.hmp('info usernet', { timeoutMs: CHECK_MS });
  const fwds = parseUsernetForwards(text, netdev);
  if (!fwds) return false;
  const addr = f.hostAddr === '' || f.hostAddr === '0.0.0.0' ? '*' : f.hostAddr;
  return fwds.some((x) => x.proto === (f.proto ?? 'tcp') && x.hostAddr === addr && x.hostPort === f.hostPort && x.guestPort === f.guestPort);
}
