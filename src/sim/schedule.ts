/**
 * The schedule generator: from a seed, a configuration (a witness or none,
 * one or two heartbeat paths, the hosts' clock rates, how often a QMP step
 * fails, slow checkpoints) and up to six faults within a minute. After the
 * last fault everything is healed (but a host gone for good) and the world is
 * left alone. A schedule is data (schedule-types.ts): a failing one is
 * stored as such and replays whatever this generator becomes.
 */
import { Rng } from './rng.js';
import { CLOCK_DRIFT_MAX } from '../node/core/core.js';
import { DEFAULT_LEASE_MS } from '../config/schema.js';
import { faultMs, type Fault, type FaultKind, type LinkName, type NodeName, type Schedule, type End } from './schedule-types.js';

/** The pair runs this long before the first fault. */
const SETTLE_MS = 3000;

const weights: Array<[FaultKind, number]> = [
  ['kill-qemu', 3],
  ['freeze-qemu', 1],
  ['kill-agent', 2],
  ['power-loss', 1.5],
  ['reboot', 1],
  ['host-gone', 0.4],
  ['host-pause', 1],
  ['cut', 4],
  ['garbage', 1],
  ['slow-link', 1],
  ['witness-down', 1],
  ['witness-restart', 0.5],
  // The witness losing its state is not generated: the witness must first know that it forgot (README, "What is not
  // there yet"); `npm run sim -- --amnesia` draws it.
  ['witness-amnesia', 0],
  ['witness-slow', 1],
  ['witness-lossy', 1],
  ['reset-replication', 1],
  // A guest that writes nothing for a while: a COLO_EXIT then comes without a write to the broken replica
  // (QUORUM_REPORT_BAD) to say it too (test/sim-regressions/resume-exit-kept-out-by-the-old-one.json).
  ['client-idle', 1],
  ['disk-errors', 1.5],
  ['record-lost', 0.5],
  ['qmp-late', 1],
  ['slow-disk', 1],
];

const cuts: LinkName[][] = [
  ['heartbeat'],
  ['replication'],
  ['heartbeat', 'replication'],
  ['witness-a'],
  ['witness-b'],
  ['lan-a'],
  ['lan-b'],
  ['heartbeat', 'replication', 'witness-a', 'lan-a'],
  ['heartbeat', 'replication', 'witness-b', 'lan-b'],
  ['replication', 'witness-a'],
  ['heartbeat', 'witness-b'],
];

/** What a schedule stresses: the mutation check draws schedules around the situation each rule exists for. */
export interface Focus {
  witness?: boolean;
  /** Weights of fault kinds, instead of the usual ones (kinds left out keep theirs). */
  weights?: Partial<Record<FaultKind, number>>;
  stepFailP?: number;
  /** Which nodes' QEMUs can pause before their switchover into COLO, instead of the drawn ones. */
  pauseIntoColo?: { a: boolean; b: boolean };
  replicaErrors?: 'p5' | 'reported';
  /** Heartbeat paths, instead of the drawn number. */
  paths?: 1 | 2;
  /** Whether some checkpoints take seconds, instead of the drawn choice. */
  slowCheckpoints?: boolean;
}

function pickKind(rng: Rng, focus: Focus): FaultKind {
  const ws = weights.map(([k, w]): [FaultKind, number] => [k, focus.weights?.[k] ?? w]);
  const total = ws.reduce((a, [, w]) => a + w, 0);
  let x = rng.range(0, total);
  for (const [k, w] of ws) {
    x -= w;
    if (x < 0) return k;
  }
  return 'kill-qemu';
}

/** A clock rate within the drift the agents allow for (core.ts, CLOCK_DRIFT_MAX). */
function clockRate(rng: Rng): number {
  return 1 + rng.range(-CLOCK_DRIFT_MAX, CLOCK_DRIFT_MAX);
}

export function scheduleFor(seed: number, focus: Focus = {}): Schedule {
  const rng = new Rng((seed * 2654435761) ^ 0x5eed);
  const witness = focus.witness ?? rng.chance(0.8);
  const windowMs = rng.range(5000, 60_000);
  const count = rng.int(1, 6);
  const faults: Fault[] = [];
  const node = (): NodeName => (rng.chance(0.5) ? 'a' : 'b');
  let quietAt = SETTLE_MS;
  for (let i = 0; i < count; i++) {
    const at = Math.round(SETTLE_MS + rng.range(0, windowMs));
    const kind = pickKind(rng, focus);
    let f: Fault;
    switch (kind) {
      case 'kill-qemu':
        f = { at, kind, node: node() };
        break;
      case 'freeze-qemu':
        f = { at, kind, node: node(), ms: Math.round(rng.range(500, 8000)) };
        break;
      case 'kill-agent':
        f = { at, kind, node: node(), ms: Math.round(rng.range(200, 15_000)) };
        break;
      case 'power-loss':
        f = { at, kind, node: node(), ms: Math.round(rng.range(1000, 30_000)) };
        break;
      case 'reboot':
        f = { at, kind, node: node(), ms: Math.round(rng.range(1000, 20_000)) };
        break;
      case 'host-gone':
        f = { at, kind, node: node() };
        break;
      case 'host-pause':
        f = { at, kind, node: node(), ms: Math.round(rng.chance(0.5) ? rng.range(100, 3000) : rng.range(3000, 30_000)) };
        break;
      case 'cut': {
        const links = rng.pick(cuts);
        const oneWay = rng.chance(0.25);
        const ms = Math.round(rng.chance(0.3) ? rng.range(200, 2000) : rng.range(2000, 40_000));
        // One way: what leaves one end of the first link (a node, or the witness or the client on its own links).
        const ends: End[] = links[0]!.startsWith('witness') ? [links[0] === 'witness-a' ? 'a' : 'b', 'w'] : links[0]!.startsWith('lan') ? [links[0] === 'lan-a' ? 'a' : 'b', 'c'] : ['a', 'b'];
        f = oneWay ? { at, kind, links: [links[0]!], ms, from: rng.pick(ends) } : { at, kind, links, ms };
        break;
      }
      case 'garbage':
        f = { at, kind, link: rng.pick<LinkName>(['heartbeat', 'replication', 'witness-a', 'witness-b']) };
        break;
      case 'slow-link':
        f = { at, kind, link: rng.pick<LinkName>(['heartbeat', 'replication', 'witness-a', 'witness-b']), ms: Math.round(rng.range(1000, 20_000)), delayMs: Math.round(rng.range(50, 1500)) };
        break;
      case 'witness-down':
        f = { at, kind, ms: Math.round(rng.range(1000, 30_000)) };
        break;
      case 'witness-restart':
      case 'witness-amnesia':
      case 'reset-replication':
        f = { at, kind };
        break;
      case 'witness-slow':
        f = { at, kind, ms: Math.round(rng.range(2000, 20_000)), delayMs: Math.round(rng.range(300, 3000)) };
        break;
      case 'witness-lossy':
        f = { at, kind, ms: Math.round(rng.range(1000, 20_000)) };
        break;
      case 'client-idle':
        f = { at, kind, ms: Math.round(rng.range(1000, 20_000)) };
        break;
      case 'disk-errors':
        f = { at, kind, node: node(), ms: Math.round(rng.range(1000, 30_000)), p: Math.round(rng.range(0.02, 0.3) * 100) / 100 };
        break;
      case 'record-lost':
        f = { at, kind, node: node(), how: rng.chance(0.5) ? 'missing' : 'unreadable' };
        break;
      case 'qmp-late':
        f = { at, kind, node: node(), ms: Math.round(rng.range(2000, 20_000)) };
        break;
      case 'slow-disk':
        f = { at, kind, node: node(), ms: Math.round(rng.range(2000, 30_000)), delayMs: Math.round(rng.range(200, 3000)) };
        break;
    }
    faults.push(f);
    const ms = faultMs(f);
    quietAt = Math.max(quietAt, at + (ms === Infinity ? 0 : ms) + 100);
  }
  faults.sort((x, y) => x.at - y.at);
  const replicaErrors = focus.replicaErrors ?? replicaErrorsFor(seed);
  dropUnheardReplicaErrors(faults, replicaErrors);
  const drift = rng.chance(0.3);
  const paths = rng.chance(0.3) ? 2 : 1;
  return {
    version: 2,
    seed,
    witness,
    paths: focus.paths ?? paths,
    clocks: drift ? { a: clockRate(rng), b: clockRate(rng), w: clockRate(rng) } : { a: 1, b: 1, w: 1 },
    stepFailP: focus.stepFailP ?? rng.pick([0, 0, 0.01, 0.03, 0.08]),
    slowCheckpoints: focus.slowCheckpoints ?? rng.chance(0.15),
    replicaErrors,
    faults,
    operatorResyncs: operatorResyncsFor(seed, faults),
    quietAt,
    pauseIntoColo: focus.pauseIntoColo ?? pauseIntoColoFor(seed),
    leaseMs: leaseMsFor(seed),
  };
}

/**
 * The agents' lease: the default (500 ms) three schedules in four, else 1000 ms (the default before, which a pair may
 * still be given). From a generator of its own, so that every seed keeps its faults.
 */
function leaseMsFor(seed: number): number {
  const rng = new Rng((seed * 40503) ^ 0x1ea5e);
  return rng.chance(0.75) ? DEFAULT_LEASE_MS : 1000;
}

/**
 * Which nodes' QEMUs can pause before their switchover into COLO (their resync goes live), each one half the time:
 * from a generator of its own, so that every seed keeps its faults.
 */
function pauseIntoColoFor(seed: number): { a: boolean; b: boolean } {
  const rng = new Rng((seed * 69069) ^ 0x7a05e);
  return { a: rng.chance(0.5), b: rng.chance(0.5) };
}

/**
 * Mostly lockstep's QEMU (P5); a fifth of the schedules a QEMU that reports a
 * replica's failed write but checkpoints on, where the agents' rules for a
 * short replica are what keeps it out. Drawn from a generator of its own, so
 * that every seed keeps its faults.
 */
function replicaErrorsFor(seed: number): 'p5' | 'reported' {
  return new Rng((seed * 69069) ^ 0x05a5).chance(0.2) ? 'reported' : 'p5';
}

/**
 * QUORUM_REPORT_BAD is said once, to the QMP monitors connected then: a
 * replica write that fails while the primary's agent is not attached (killed,
 * restarting) goes unheard, and nothing in QEMU keeps count of it (README,
 * "What is not there yet"). P5 narrows that limit: the primary's next
 * checkpoint fails whoever listens, so its VM stops with every acknowledged
 * write on its disk, and the secondary's VM holds its own copy of the write in
 * its active buffer, which its takeover commits. What is left is the buffer
 * lost before that commit: soak seed 5,057,581, where the secondary took
 * over, its QEMU hung and was killed before its failover, and it restarted
 * from the replica that had failed the write. Such a schedule shows that
 * limit, not a bug: a disk's errors never overlap the other node's agent being
 * away where the disk's node may then lose its QEMU (or, without P5, at all).
 */
function dropUnheardReplicaErrors(faults: Fault[], replicaErrors: 'p5' | 'reported'): void {
  for (let i = faults.length - 1; i >= 0; i--) {
    const f = faults[i]!;
    if (f.kind === 'disk-errors' && unheardReplicaErrors(faults, f) && (replicaErrors !== 'p5' || mayLoseQemu(faults, f.node))) faults.splice(i, 1);
  }
}

/** Whether a replica's errors overlap the other node's agent being away (killed and restarting, or its disk record lost). */
export function unheardReplicaErrors(faults: readonly Fault[], f: Extract<Fault, { kind: 'disk-errors' }>): boolean {
  return faults.some((g) => {
    if (g.kind !== 'kill-agent' && g.kind !== 'record-lost') return false;
    const to = g.kind === 'kill-agent' ? g.at + g.ms + 1000 : g.at + 3000;
    return g.node !== f.node && g.at < f.at + f.ms && f.at < to;
  });
}

/** Faults after which a node's QEMU may be gone: killed by the fault or by its agent, or with its host. */
const QEMU_ENDING: ReadonlySet<FaultKind> = new Set<FaultKind>(['kill-qemu', 'freeze-qemu', 'qmp-late', 'power-loss', 'reboot', 'host-gone', 'host-pause', 'slow-disk']);

/** Whether a schedule has a fault that may end this node's QEMU. */
export function mayLoseQemu(faults: readonly Fault[], node: NodeName): boolean {
  return faults.some((g) => QEMU_ENDING.has(g.kind) && 'node' in g && g.node === node);
}

/**
 * Now and then an operator asks for a resync (lockstep resync NAME), as one
 * would: a little after a fault, when a node may run the VM alone. Drawn
 * from a generator of its own, so that every seed keeps its faults.
 */
function operatorResyncsFor(seed: number, faults: Fault[]): Array<{ at: number; node: NodeName }> {
  const rng = new Rng((seed * 40503) ^ 0x0e5c);
  if (faults.length === 0 || !rng.chance(0.3)) return [];
  return Array.from({ length: rng.int(1, 3) }, () => ({
    at: Math.round(rng.pick(faults).at + rng.range(200, 8000)),
    node: rng.chance(0.5) ? ('a' as const) : ('b' as const),
  }));
}
