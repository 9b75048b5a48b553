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

/** A small JSON file of ours: missing, unreadable (the error says why), or its parsed content. */
function readJsonFile(file: string): { state: 'missing' } | { state: 'unreadable'; error: string } | { state: 'ok'; json: unknown } {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'missing' };
    return { state: 'unreadable', error: (err as Error).message };
  }
  try {
    return { state: 'ok', json: JSON.parse(text) };
  } catch (err) {
    return { state: 'unreadable', error: `not JSON: ${(err as Error).message}` };
  }
}

function issuesOf(e: z.ZodError): string {
  return e.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
}

export function readDiskRecord(dataDir: string): ReadDisk {
  const f = readJsonFile(generationFile(dataDir));
  if (f.state !== 'ok') return f;
  const r = recordSchema.safeParse(f.json);
  if (r.success) return { state: 'ok', record: r.data };
  const old = legacySchema.safeParse(f.json);
  if (old.success) return { state: 'ok', record: { epoch: { run: old.data.pair, gen: old.data.generation, by: 'up' }, at: old.data.at, why: old.data.why } };
  return { state: 'unreadable', error: issuesOf(r.error) };
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

/**
 * Commits `epoch` as the disk's epoch (and clears any pending one). Written by
 * `up`, a resync and a failover by hand, each of which makes the disk whole
 * or the writer's: any note of what it lacked goes too.
 */
export function writeEpoch(dataDir: string, e: Epoch, why: string): DiskRecord {
  const rec: DiskRecord = { epoch: e, at: new Date().toISOString(), why };
  writeDiskRecord(dataDir, rec);
  if (fs.existsSync(replicaNoteFile(dataDir))) writeReplicaNote(dataDir, { missedWrite: false, forwardedWriteFailed: false, why });
  return rec;
}

/**
 * What a replica's primary said its disk lacks (a missed write, a failed
 * forwarded write), beside the record: `<dataDir>/replica-note.json`, written
 * durably by the agent whenever it changes, so that an agent started again
 * still knows. A file of its own, so that it never races the record's epoch.
 */
export interface ReplicaNoteRecord {
  missedWrite: boolean;
  forwardedWriteFailed: boolean;
  at: string;
  why: string;
}

const noteSchema = z.object({ missedWrite: z.boolean(), forwardedWriteFailed: z.boolean(), at: z.string(), why: z.string() });

export function replicaNoteFile(dataDir: string): string {
  return path.join(dataDir, 'replica-note.json');
}

/**
 * The note, if there is one. A note that cannot be read says the disk lacks
 * both (the safe side: a disk that may lack an acknowledged write restarts no
 * VM and takes over nothing before a resync); its error is given.
 */
export function readReplicaNote(dataDir: string): { note: ReplicaNoteRecord | undefined; error?: string } {
  const f = readJsonFile(replicaNoteFile(dataDir));
  if (f.state === 'missing') return { note: undefined };
  if (f.state === 'unreadable') return unreadableNote(f.error);
  const r = noteSchema.safeParse(f.json);
  return r.success ? { note: r.data } : unreadableNote(issuesOf(r.error));
}

function unreadableNote(error: string): { note: ReplicaNoteRecord; error: string } {
  return { note: { missedWrite: true, forwardedWriteFailed: true, at: new Date().toISOString(), why: `the note could not be read: ${error}` }, error };
}

/** Writes the note durably (one that says the disk lacks nothing too: a removal could come back after a power loss). */
export function writeReplicaNote(dataDir: string, note: Omit<ReplicaNoteRecord, 'at'>): void {
  fs.mkdirSync(dataDir, { recursive: true });
  writeFileAtomic(replicaNoteFile(dataDir), JSON.stringify({ ...note, at: new Date().toISOString() }) + '\n', { durable: true });
}
