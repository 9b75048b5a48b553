/**
 * Disk epochs: which data a node's disk holds, like a term number with the
 * name of the node that began it.
 *
 * `up` gives both disks one epoch `{ run, gen, by: 'up' }` (a new run of the
 * pair). A node about to write alone (a takeover, a primary carrying on
 * without its secondary, a restart) begins a new epoch `{ gen + 1, by: itself }`;
 * with a witness it is recorded there first, and the witness accepts a new
 * generation only above the newest it knows, so no two disks ever hold
 * different data under the same epoch. A resync hands the source's epoch to
 * the target once it holds the same data.
 *
 * Pure functions only: no files (generation.ts keeps them on disk).
 */

export interface Epoch {
  /** The run of the pair this disk belongs to (made by `up`). */
  run: string;
  /** Counts up each time a node begins writing alone. */
  gen: number;
  /** Who began this epoch: a node's name, or 'up'. */
  by: string;
}

/**
 * How disk `a` relates to disk `b`:
 * - 'same': the same data (same epoch);
 * - 'newer' / 'older': one is a later epoch of the same run;
 * - 'divergent': the same generation begun by different nodes (both wrote
 *   alone: only possible without a witness); neither may overwrite the other;
 * - 'other-run': from different runs of the pair; not comparable;
 * - 'unknown': at least one of them is not known (a missing or unreadable
 *   generation file): never a reason to overwrite it.
 */
export type EpochOrder = 'same' | 'newer' | 'older' | 'divergent' | 'other-run' | 'unknown';

export function compareEpochs(a: Epoch | undefined, b: Epoch | undefined): EpochOrder {
  if (!a || !b) return 'unknown';
  if (a.run !== b.run) return 'other-run';
  if (a.gen > b.gen) return 'newer';
  if (a.gen < b.gen) return 'older';
  return a.by === b.by ? 'same' : 'divergent';
}

/** Whether a disk of epoch `target` may be overwritten by a resync from `source`: only an older or identical disk. */
export function mayResyncTowards(source: Epoch | undefined, target: Epoch | undefined): boolean {
  const o = compareEpochs(source, target);
  return o === 'newer' || o === 'same';
}

export function epochEquals(a: Epoch | undefined, b: Epoch | undefined): boolean {
  return compareEpochs(a, b) === 'same';
}

export function formatEpoch(e: Epoch | undefined): string {
  return e ? `${e.gen}/${e.by}` : 'unknown';
}

/** The next epoch when `node` begins writing alone. */
export function nextEpoch(e: Epoch, node: string): Epoch {
  return { run: e.run, gen: e.gen + 1, by: node };
}
