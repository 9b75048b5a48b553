/**
 * Disk generations: each node keeps, next to its data (<dataDir>/generation.json),
 * the generation of the disk its VM writes, like a term number. `up` gives
 * both disks one new generation; a takeover raises the survivor's before it
 * writes alone; a resync hands the source's generation to the target once
 * it holds the same data. A node with a lower generation than its peer holds
 * stale data: it may only ever be the target of a resync, never its source.
 * Generations count within one run of the pair (`pair`, made by `up`); the
 * witness keeps the newest per run.
 */
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/files.js';

export interface Generation {
  generation: number;
  /** The run of the pair this disk belongs to (made by `up`; a resync hands it on with the generation). */
  pair: string;
  at: string;
  why: string;
}

function file(dataDir: string): string {
  return path.join(dataDir, 'generation.json');
}

/** The node's generation; 0 for a node that never held data. */
export function readGeneration(dataDir: string): Generation {
  try {
    const g = JSON.parse(fs.readFileSync(file(dataDir), 'utf8')) as Generation;
    if (Number.isInteger(g.generation) && g.generation >= 0) return g;
  } catch {
    /* none yet */
  }
  return { generation: 0, pair: '', at: '', why: 'never written' };
}

/** Writes the node's generation durably (write, fsync, rename). */
export function writeGeneration(dataDir: string, generation: number, why: string, pair: string = readGeneration(dataDir).pair): Generation {
  const g: Generation = { generation, pair, at: new Date().toISOString(), why };
  fs.mkdirSync(dataDir, { recursive: true });
  writeFileAtomic(file(dataDir), JSON.stringify(g) + '\n', { durable: true });
  return g;
}

/** A takeover: this node now writes alone, so its disk starts a new generation. */
export function bumpGeneration(dataDir: string, why: string): Generation {
  return writeGeneration(dataDir, readGeneration(dataDir).generation + 1, why);
}
