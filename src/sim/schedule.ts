/**
 * A schedule of faults from one seed: which configuration (witness or not,
 * one or two heartbeat paths, how often QMP steps fail, slow checkpoints),
 * and which faults, when, for how long. After the last fault everything is
 * healed and the world is left alone: that is when liveness is judged.
 */
import { Rng } from './rng.js';
import type { Fault, LinkName, NodeName, SimOptions } from './model.js';

/** The pair runs this long before the first fault. */
const SETTLE_MS = 3000;

const weights: Array<[Fault['kind'], number]> = [
  ['kill-qemu', 3],
  ['freeze-qemu', 1],
  ['kill-agent', 2],
  ['power-loss', 1.5],
  ['reboot', 1],
  ['cut', 4],
  ['garbage', 1],
  ['slow-link', 1],
  ['witness-down', 1],
  ['witness-restart', 0.5],
  ['witness-slow', 1],
  ['witness-lossy', 1],
  ['reset-replication', 1],
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

function pickKind(rng: Rng): Fault['kind'] {
  const total = weights.reduce((a, [, w]) => a + w, 0);
  let x = rng.range(0, total);
  for (const [k, w] of weights) {
    x -= w;
    if (x < 0) return k;
  }
  return 'kill-qemu';
}

export function scheduleFor(seed: number): SimOptions {
  const rng = new Rng((seed * 2654435761) ^ 0x5eed);
  const witness = rng.chance(0.85);
  // Without a witness the pair survives crashes, not partitions (README): no cut that separates the agents.
  const allowed = (f: Fault): boolean => witness || f.kind !== 'cut' || f.links.every((l) => l === 'lan-a' || l === 'lan-b' || l === 'witness-a' || l === 'witness-b');
  const windowMs = rng.range(5000, 60_000);
  const count = rng.int(1, 6);
  const faults: Fault[] = [];
  const node = (): NodeName => (rng.chance(0.5) ? 'a' : 'b');
  let quietAt = SETTLE_MS;
  for (let i = 0; i < count; i++) {
    const at = Math.round(SETTLE_MS + rng.range(0, windowMs));
    const kind = pickKind(rng);
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
      case 'cut':
        f = { at, kind, links: rng.pick(cuts), ms: Math.round(rng.chance(0.3) ? rng.range(200, 2000) : rng.range(2000, 40_000)) };
        break;
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
        f = { at, kind };
        break;
      case 'witness-slow':
        f = { at, kind, ms: Math.round(rng.range(2000, 20_000)), delayMs: Math.round(rng.range(300, 3000)) };
        break;
      case 'witness-lossy':
        f = { at, kind, ms: Math.round(rng.range(1000, 20_000)) };
        break;
      case 'reset-replication':
        f = { at, kind };
        break;
    }
    if (!allowed(f)) continue;
    faults.push(f);
    quietAt = Math.max(quietAt, at + ('ms' in f ? f.ms : 0) + 100);
  }
  faults.sort((x, y) => x.at - y.at);
  return {
    seed,
    witness,
    paths: rng.chance(0.3) ? 2 : 1,
    faults,
    quietAt,
    stepFailP: rng.pick([0, 0, 0.01, 0.03, 0.08]),
    slowCheckpoints: rng.chance(0.15),
    operatorResyncs: operatorResyncsFor(seed, faults),
  };
}

/**
 * Now and then an operator asks for a resync (lockstep resync NAME), as one
 * would: a little after a fault, when a node may run the VM alone. Drawn
 * from a generator of their own, so that every seed keeps the faults it
 * always had.
 */
function operatorResyncsFor(seed: number, faults: Fault[]): Array<{ at: number; node: NodeName }> {
  const rng = new Rng((seed * 40503) ^ 0x0e5c);
  if (faults.length === 0 || !rng.chance(0.3)) return [];
  return Array.from({ length: rng.int(1, 3) }, () => ({
    at: Math.round(rng.pick(faults).at + rng.range(200, 8000)),
    node: rng.chance(0.5) ? ('a' as const) : ('b' as const),
  }));
}
