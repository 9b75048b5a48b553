/**
 * A node's disk epoch on disk: `<dataDir>/generation.json`, written durably
 * (write, fsync, rename, fsync of the directory). See epoch.ts for what an
 * epoch means.
 *
 * A record may also hold a `pending` epoch: the node is about to write alone
 * and asked the witness to record that epoch, but has not heard back yet.
 * It is kept so that a node restarted in between asks again with the same
 * epoch (the witness accepts it again, or refuses it because someone else
 * began a newer one) instead of forgetting that the witness may hold it.
 *
 * A missing or unreadable file is *unknown*, never "generation 0": nothing
 * decides to overwrite a disk because its record was lost.
 */
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../util/files.js';
import type { Epoch } from './epoch.js';

export interface DiskRecord {
  epoch: Epoch;
  pending?: Epoch;
  at: string;
  why: string;
}

const epoch = z.object({ run: z.string().max(64), gen: z.number().int().min(0), by: z.string().min(1).max(64) });
const recordSchema = z.object({ epoch, pending: epoch.optional(), at: z.string(), why: z.string() });
/** The format before epochs had a `by` (kept readable: such a disk was last written by `up` or a resync). */
const legacySchema = z.object({ generation: z.number().int().min(0), pair: z.string(), at: z.string(), why: z.string() });

export type ReadDisk = { state: 'ok'; record: DiskRecord } | { state: 'missing' } | { state: 'unreadable'; error: string };

export function generationFile(dataDir: string): string {
  return path.join(dataDir, 'generation.json');
}

export function readDiskRecord(dataDir: string): ReadDisk {
  let text: string;
  try {
    text = fs.readFileSync(generationFile(dataDir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'missing' };
    return { state: 'unreadable', error: (err as Error).message };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { state: 'unreadable', error: `not JSON: ${(err as Error).message}` };
  }
  const r = recordSchema.safeParse(json);
  if (r.success) return { state: 'ok', record: r.data };
  const old = legacySchema.safeParse(json);
  if (old.success) return { state: 'ok', record: { epoch: { run: old.data.pair, gen: old.data.generation, by: 'up' }, at: old.data.at, why: old.data.why } };
  return { state: 'unreadable', error: r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') };
}

/** The node's committed epoch, or undefined when unknown (missing or unreadable record). */
export function readEpoch(dataDir: string): Epoch | undefined {
  const r = readDiskRecord(dataDir);
  return r.state === 'ok' ? r.record.epoch : undefined;
}

/** Writes the node's record durably. */
export function writeDiskRecord(dataDir: string, rec: DiskRecord): void {
  fs.mkdirSync(dataDir, { recursive: true });
  writeFileAtomic(generationFile(dataDir), JSON.stringify(rec) + '\n', { durable: true });
}

/** Commits `epoch` as the disk's epoch (and clears any pending one). */
export function writeEpoch(dataDir: string, e: Epoch, why: string): DiskRecord {
  const rec: DiskRecord = { epoch: e, at: new Date().toISOString(), why };
  writeDiskRecord(dataDir, rec);
  return rec;
}
