/**
 * A host's event journal: one JSON record per line (api-types'
 * journalRecordSchema), appended to <stateDir>/journal/events.jsonl. The
 * line is written before append() returns, so no record is lost when the
 * daemon restarts or crashes (the kernel has it); then fdatasync makes it
 * durable against a power loss, off the event loop (one flush at a time,
 * each covering every record written before it began): a daemon whose loop
 * waited on the disk would delay every heartbeat it sends. What a power loss
 * can take is the records of the last flush under way (milliseconds); stop
 * flushes synchronously. Rotated by
 * size: the current file moves to events.jsonl.1 (.1 to .2, ...) once it
 * would pass `maxFileBytes`, and the oldest beyond `files` is dropped, so the
 * journal never holds more than files × maxFileBytes. Records are numbered
 * without gaps across restarts (the last number is read back at open). A
 * line cut short by a crash in the middle of a write (never acknowledged:
 * its fdatasync had not returned) is cut off at open.
 */
import fs from 'node:fs';
import path from 'node:path';
import { errorMessage } from '../util/errors.js';
import { journalRecordSchema, type Figure, type JournalKind, type JournalRecord } from './api-types.js';

export const JOURNAL_FILE = 'events.jsonl';
/** Defaults: 4 files of at most 4 MiB (about 40,000 records of a few hundred bytes). */
export const JOURNAL_MAX_FILE_BYTES = 4 * 1024 * 1024;
export const JOURNAL_FILES = 4;
/** A record's reason, a figure's text and the figures of one record are cut to these. */
const REASON_MAX_CHARS = 2000;
const FIGURE_TEXT_MAX_CHARS = 300;
const FIGURES_MAX = 24;
/** The newest records kept in memory (the dashboard's recent events, --follow's next page). */
const RECENT_MAX = 2000;
/** A read answers with at most this many records (the newest). */
export const READ_LIMIT_MAX = 10_000;

export interface JournalDraft {
  vm: string | null;
  kind: JournalKind;
  reason: string;
  figures?: Record<string, Figure | undefined>;
}

export interface JournalQuery {
  /** Only this VM's records (and the host's own, vm: null). */
  vm?: string;
  /** Only records at or after this wall-clock time (ms). */
  sinceMs?: number;
  /** Only records numbered after this. */
  afterSeq?: number;
  /** At most this many, the newest (≤ READ_LIMIT_MAX). */
  limit?: number;
}

export interface JournalOptions {
  dir: string;
  host: string;
  /** The wall clock (ms since the epoch); injected for tests. */
  wallNow?: () => number;
  maxFileBytes?: number;
  files?: number;
  /** Where the journal says what went wrong with itself (a write that failed, a torn line cut at open). */
  log?: (level: 'warn' | 'error', msg: string, detail?: Record<string, unknown>) => void;
}

function invariant(cond: boolean, what: string): asserts cond {
  if (!cond) throw new Error(`journal invariant broken: ${what}`);
}

/** A record's figures, bounded: at most FIGURES_MAX, texts cut, undefined left out, non-finite numbers as null. */
function boundFigures(f: Record<string, Figure | undefined> | undefined): Record<string, Figure> {
  const out: Record<string, Figure> = {};
  let n = 0;
  for (const [k, v] of Object.entries(f ?? {})) {
    if (v === undefined) continue;
    if (n++ >= FIGURES_MAX) break;
    out[k.slice(0, 64)] = typeof v === 'string' ? v.slice(0, FIGURE_TEXT_MAX_CHARS) : typeof v === 'number' && !Number.isFinite(v) ? null : v;
  }
  return out;
}

export class Journal {
  private fd: number | undefined;
  private size = 0;
  private seq = 0;
  private readonly recentRecords: JournalRecord[] = [];
  private errors = 0;
  private lastError: string | null = null;
  /** Records appended by this process (since it opened the journal). */
  private appendedCount = 0;
  /** A flush (fdatasync) is under way (of this file), and records were written since it began. */
  private flushing = false;
  private flushingFd: number | undefined;
  private dirty = false;
  /** Files replaced while a flush of theirs was under way: closed when it ends. */
  private readonly retired = new Set<number>();
  private flushWaiters: Array<() => void> = [];
  private readonly wallNow: () => number;
  private readonly maxFileBytes: number;
  private readonly files: number;
  private readonly log: NonNullable<JournalOptions['log']>;

  private constructor(private readonly o: JournalOptions) {
    this.wallNow = o.wallNow ?? Date.now;
    this.maxFileBytes = o.maxFileBytes ?? JOURNAL_MAX_FILE_BYTES;
    this.files = o.files ?? JOURNAL_FILES;
    this.log = o.log ?? (() => {});
    invariant(this.maxFileBytes >= 16 * 1024 && this.files >= 2, 'room for at least two files of 16 KiB');
  }

  /** Opens (or creates, 0700) the journal in `o.dir`: the records already there are read back for their numbers. */
  static open(o: JournalOptions): Journal {
    const j = new Journal(o);
    fs.mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    const file = j.file(0);
    j.cutTornTail(file);
    j.fd = fs.openSync(file, 'a', 0o600);
    j.size = fs.fstatSync(j.fd).size;
    // The newest records, oldest first, for their numbers and the recent ones.
    for (const r of j.readAll()) {
      j.seq = Math.max(j.seq, r.seq);
      j.remember(r);
    }
    return j;
  }

  /** File `i` of the journal: 0 is the one written now, the highest the oldest. */
  private file(i: number): string {
    return path.join(this.o.dir, i === 0 ? JOURNAL_FILE : `${JOURNAL_FILE}.${i}`);
  }

  /** A crash in the middle of an append leaves a line without its newline: it was never acknowledged, and goes. */
  private cutTornTail(file: string): void {
    let text: Buffer;
    try {
      text = fs.readFileSync(file);
    } catch {
      return;
    }
    if (text.length === 0 || text[text.length - 1] === 0x0a) return;
    const keep = text.lastIndexOf(0x0a) + 1;
    fs.truncateSync(file, keep);
    this.log('warn', 'the journal ended in a line cut short (a crash while it was written): cut off', { file, bytes: text.length - keep });
  }

  get lastSeq(): number {
    return this.seq;
  }

  /** Records appended since the journal was opened (by this daemon). */
  get appended(): number {
    return this.appendedCount;
  }

  /** Bytes in the journal's files. */
  get bytes(): number {
    let sum = 0;
    for (let i = 0; i < this.files; i++) {
      try {
        sum += fs.statSync(this.file(i)).size;
      } catch {
        // not there
      }
    }
    return sum;
  }

  /** Appends that failed since the daemon started, and the last one's error. */
  get writeErrors(): { count: number; last: string | null } {
    return { count: this.errors, last: this.lastError };
  }

  /**
   * Appends a record: written before it returns (a daemon crash loses
   * nothing), flushed to the disk right after. A failure to write is counted,
   * logged and kept in memory (the record still shows in the recent ones),
   * never thrown: the journal must not stop what it records.
   */
  append(d: JournalDraft): JournalRecord {
    const rec: JournalRecord = {
      seq: this.seq + 1,
      at: new Date(this.wallNow()).toISOString(),
      host: this.o.host,
      vm: d.vm,
      kind: d.kind,
      reason: d.reason.length > REASON_MAX_CHARS ? `${d.reason.slice(0, REASON_MAX_CHARS - 1)}…` : d.reason,
      figures: boundFigures(d.figures),
    };
    const line = Buffer.from(JSON.stringify(rec) + '\n', 'utf8');
    invariant(line.length <= 16 * 1024, 'a record is at most 16 KiB');
    this.seq = rec.seq;
    this.appendedCount++;
    try {
      if (this.size > 0 && this.size + line.length > this.maxFileBytes) this.rotate();
      if (this.fd === undefined) this.fd = fs.openSync(this.file(0), 'a', 0o600);
      for (let off = 0; off < line.length; ) {
        const n = fs.writeSync(this.fd, line, off, line.length - off);
        invariant(n > 0, 'a write makes progress');
        off += n;
      }
      this.size += line.length;
      this.flush();
    } catch (err) {
      this.failed(err, `journal record ${rec.seq} (${rec.kind}) could not be written`);
      // A half-written line would spoil the next one: cut back to where this record began, then reopen.
      try {
        if (this.fd !== undefined) fs.ftruncateSync(this.fd, this.size);
      } catch {
        // The torn tail is cut at the next open.
      }
      this.closeFd();
    }
    this.remember(rec);
    return rec;
  }

  /** Begins a flush of what was written, unless one is under way (then another follows it). */
  private flush(): void {
    this.dirty = true;
    const fd = this.fd;
    if (this.flushing || fd === undefined) return;
    this.flushing = true;
    this.flushingFd = fd;
    this.dirty = false;
    fs.fdatasync(fd, (err) => {
      this.flushing = false;
      this.flushingFd = undefined;
      if (err) this.failed(err, 'a journal flush to disk failed');
      if (this.retired.delete(fd)) fs.close(fd, () => {});
      if (this.dirty && this.fd !== undefined) return this.flush();
      const waiters = this.flushWaiters.splice(0);
      for (const w of waiters) w();
    });
  }

  /** Resolves once every record appended so far is on disk (or its flush failed, counted). */
  flushed(): Promise<void> {
    if (!this.flushing && !this.dirty) return Promise.resolve();
    return new Promise((resolve) => this.flushWaiters.push(resolve));
  }

  private failed(err: unknown, what: string): void {
    this.errors++;
    this.lastError = errorMessage(err);
    this.log('error', what, { err: this.lastError });
  }

  private remember(r: JournalRecord): void {
    this.recentRecords.push(r);
    if (this.recentRecords.length > RECENT_MAX) this.recentRecords.splice(0, this.recentRecords.length - RECENT_MAX);
  }

  /** The current file becomes .1 (the others move up, the oldest beyond `files` goes); a new one is begun. */
  private rotate(): void {
    this.closeFd();
    fs.rmSync(this.file(this.files - 1), { force: true });
    for (let i = this.files - 2; i >= 0; i--) {
      if (fs.existsSync(this.file(i))) fs.renameSync(this.file(i), this.file(i + 1));
    }
    this.fd = fs.openSync(this.file(0), 'a', 0o600);
    this.size = 0;
    // The renames and the new file, on disk before any record goes into it.
    const dfd = fs.openSync(this.o.dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  }

  /** Ends the current file: on disk first; closed now, or when the flush under way on it ends. */
  private closeFd(): void {
    const fd = this.fd;
    if (fd === undefined) return;
    this.fd = undefined;
    try {
      fs.fdatasyncSync(fd);
    } catch (err) {
      this.failed(err, 'the journal could not be flushed to disk');
    }
    if (this.flushing && this.flushingFd === fd) {
      this.retired.add(fd);
      return;
    }
    try {
      fs.closeSync(fd);
    } catch {
      // closed
    }
  }

  /** Every readable record on disk, oldest first (a line that does not parse is skipped and counted). */
  private readAll(): JournalRecord[] {
    const out: JournalRecord[] = [];
    let bad = 0;
    for (let i = this.files - 1; i >= 0; i--) {
      let text: string;
      try {
        text = fs.readFileSync(this.file(i), 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n')) {
        if (!line) continue;
        try {
          const r = journalRecordSchema.safeParse(JSON.parse(line));
          if (r.success) out.push(r.data);
          else bad++;
        } catch {
          bad++;
        }
      }
    }
    if (bad) this.log('warn', 'journal lines that are not records were skipped', { lines: bad });
    return out;
  }

  /**
   * The records that match `q`, oldest first: at most `limit`, the newest of
   * them (`truncated` says when older ones were left out). A query after a
   * recent record is answered from memory; others read the files.
   */
  read(q: JournalQuery = {}): { records: JournalRecord[]; truncated: boolean } {
    const limit = Math.max(1, Math.min(READ_LIMIT_MAX, q.limit ?? READ_LIMIT_MAX));
    const oldestKept = this.recentRecords[0]?.seq;
    const fromMemory = q.afterSeq !== undefined && oldestKept !== undefined && q.afterSeq >= oldestKept - 1;
    const all = fromMemory ? this.recentRecords : this.readAll();
    const match = all.filter((r) => (q.vm === undefined || r.vm === q.vm || r.vm === null) && (q.afterSeq === undefined || r.seq > q.afterSeq) && (q.sinceMs === undefined || Date.parse(r.at) >= q.sinceMs));
    return { records: match.slice(-limit), truncated: match.length > limit };
  }

  /** The newest `n` records kept in memory (of VM `vm` and the host's own, if given), oldest first. */
  recent(n: number, vm?: string): JournalRecord[] {
    const out: JournalRecord[] = [];
    for (let i = this.recentRecords.length - 1; i >= 0 && out.length < n; i--) {
      const r = this.recentRecords[i]!;
      if (vm === undefined || r.vm === vm || r.vm === null) out.push(r);
    }
    return out.reverse();
  }

  close(): void {
    this.closeFd();
  }
}
