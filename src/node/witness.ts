/**
 * The witness's runtime: the server that answers the agents' lease requests
 * (`Witness`), the agents' end of its link (`WitnessConnection`), and a
 * promise-based client for tests and tools (`WitnessClient`).
 *
 * What the witness decides is in witness-core.ts (a pure function); this file
 * only moves messages and keeps the record on disk. Every request arrives over
 * the authenticated link (link.ts) already parsed with witnessRequestSchema
 * (wire.ts): anything else is refused there, logged, and never reaches the
 * witness's state. A new disk epoch is written to its VM's record durably
 * BEFORE the grant that carries it goes out; if it cannot be written, the
 * request is refused and nothing changes. The write does not block the event
 * loop: meanwhile the requests of that VM wait (at most MAX_WAITING_PER_VM),
 * those of other VMs are answered.
 *
 * Record files:
 * - `stateFile`: the witness's own, `{ "format": 2, "instance", "createdAt" }`,
 *   written at its first start. Its `instance` says which witness this is: a
 *   witness whose record was lost starts as a new instance, which vouches for
 *   no run (witness-core: a run not on record is granted only on the word of
 *   both of its VM's nodes).
 * - `stateFile.d/VM.json`: one per VM, `{ "vm", "runs": { <run>: { run, gen,
 *   by } } }`, at most RUNS_PER_VM runs: each write is one small file.
 * The file of earlier versions (`{ "newest": { <run>: epoch } }`, or older,
 * `{ "generations": { <run>: gen } }`, read as epochs begun by 'up') did not
 * say whose runs they are: they are kept as a floor (`legacy`), and the file
 * is rewritten in this format at start. Anything that exists but cannot be
 * read or does not parse stops the witness at start, saying what to do.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { z } from 'zod';
import { listenLinks, connectLink, describeIssues, linkNameSchema, type Link } from './link.js';
import {
  epochSchema,
  witnessReplySchema,
  witnessRequestSchema,
  type LeaseReply,
  type WitnessReply,
  type WitnessRequest,
} from './wire.js';
import { holderOf, initWitness, newestOf, recordKey, splitRecordKey, withVmOf, witnessStep, type WitnessState } from './witness-core.js';
import type { Epoch } from '../pair/epoch.js';
import { nodeName } from '../config/schema.js';
import type { Arbiter } from './arbiter.js';
import { writeFileAtomic, writeFileDurable } from '../util/files.js';
import { LogBudget, budgeted } from '../util/log-budget.js';
import { LockstepError, TimeoutError, errorMessage } from '../util/errors.js';

/** The name the witness proves on every link; agents accept no other. */
export const WITNESS_NAME = 'witness';
/** Default grace period after start, when the options give none. */
export const DEFAULT_GRACE_MS = 2000;

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

// ---- the state files ----

const runSchema = z.string().max(64);
const runsSchema = z.record(runSchema, epochSchema).refine((r) => Object.entries(r).every(([run, e]) => e.run === run), 'every epoch must be filed under its own run');
/** The witness's own record (stateFile): which witness this is, since when, and the floor of earlier versions' records. */
const instanceFileSchema = z.object({ format: z.literal(2), instance: z.string().regex(/^[0-9a-f-]{8,64}$/), createdAt: z.string().max(64), legacy: runsSchema.optional() }).strict();
/** One VM's record (stateFile.d/VM.json): the newest epoch of each of its runs, oldest first. */
const vmFileSchema = z.object({ vm: z.string().max(64), runs: runsSchema }).strict();
const legacyStateFileSchema = z.object({ newest: runsSchema });
const legacyGenerationsSchema = z.object({ generations: z.record(runSchema, z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)) });

/** What a witness knows at start: its identity, its VMs' records, and the floor of an earlier version's file. */
export interface WitnessRecord {
  instance: string;
  createdAt: string;
  /** recordKey(vm, run) → the newest epoch. */
  newest: Record<string, Epoch>;
  legacy: Record<string, Epoch>;
  /** No record existed: this witness vouches for no run yet. */
  fresh: boolean;
  /** The file was of an earlier version: it is rewritten in this one at start. */
  migrated: boolean;
}

/** Where the VMs' records of the witness whose own record is `file` are kept: one file per VM. */
export function witnessVmsDir(file: string): string {
  return `${file}.d`;
}

function recordFail(file: string, what: string): never {
  throw new LockstepError(`the witness's record ${file} ${what}: refusing to start without the newest disk epochs it holds`, {
    hint:
      `inspect ${file} and ${witnessVmsDir(file)}/ (and any *.tmp-* beside them) and repair them, or restore them from a backup. ` +
      'Moved away, the witness starts as a new one: it then grants the lease of a VM only once both of its nodes have spoken ' +
      '(a run it has no record of is one it may have forgotten).',
  });
}

/** The JSON in `at` (undefined: no such file); `file` is the witness's own record, `at` it or one of its VMs'. */
function readJson(file: string, at: string): unknown {
  const what = at === file ? '' : `has a VM's record ${at} that `;
  let text: string;
  try {
    text = fs.readFileSync(at, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return recordFail(file, `${what}cannot be read (${errorMessage(err)})`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    return recordFail(file, `${what}is not JSON (${clip(errorMessage(err), 200)})`);
  }
}

function reservedKeyOf(json: unknown, key: string): string | undefined {
  const runs = json !== null && typeof json === 'object' && !Array.isArray(json) ? (json as Record<string, unknown>)[key] : undefined;
  return runs !== null && typeof runs === 'object' ? Object.keys(runs).find(isReservedRun) : undefined;
}

function firstIssue(err: z.ZodError): string {
  const issue = err.issues[0];
  return issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid';
}

/**
 * The witness's record: its own file `file` and its VMs' files beside it. A
 * first start (neither exists) is `fresh`. Throws LockstepError if anything
 * exists but cannot be read or is not a witness record, or the VMs' records
 * exist without the witness's own: a witness never starts on half a record.
 */
export function loadWitnessRecord(file: string): WitnessRecord {
  const dir = witnessVmsDir(file);
  const json = readJson(file, file);
  const dirExists = fs.existsSync(dir);
  if (json === undefined) {
    if (dirExists) recordFail(file, `is missing, but its VMs' records are in ${dir}`);
    return { instance: crypto.randomUUID(), createdAt: new Date().toISOString(), newest: {}, legacy: {}, fresh: true, migrated: false };
  }
  for (const key of ['newest', 'generations', 'legacy']) {
    const bad = reservedKeyOf(json, key);
    if (bad !== undefined) recordFail(file, `is not a witness record (${key}: the run name ${JSON.stringify(bad)} is reserved)`);
  }
  const own = instanceFileSchema.safeParse(json);
  let rec: WitnessRecord;
  if (own.success) {
    rec = { instance: own.data.instance, createdAt: own.data.createdAt, newest: {}, legacy: { ...(own.data.legacy ?? {}) }, fresh: false, migrated: false };
  } else {
    // Earlier versions kept every run in one file, not saying whose: a floor for every VM from now on.
    const old = legacyStateFileSchema.safeParse(json);
    const older = old.success ? undefined : legacyGenerationsSchema.safeParse(json);
    if (!old.success && !older?.success) recordFail(file, `is not a witness record (${firstIssue(own.error)})`);
    const legacy: Record<string, Epoch> = {};
    if (old.success) Object.assign(legacy, old.data.newest);
    else for (const [run, gen] of Object.entries(older!.data!.generations)) legacy[run] = { run, gen, by: 'up' };
    rec = { instance: crypto.randomUUID(), createdAt: new Date().toISOString(), newest: {}, legacy, fresh: false, migrated: true };
  }
  if (!dirExists) return rec;
  let names: string[];
  try {
    names = fs.readdirSync(dir).sort();
  } catch (err) {
    return recordFail(file, `has a directory of VMs' records ${dir} that cannot be read (${errorMessage(err)})`);
  }
  // A VM's file: NAME.json (temporary files of an interrupted write are left alone: the rename never happened).
  const byVm: Array<[string, number, Record<string, Epoch>]> = [];
  for (const n of names) {
    if (!n.endsWith('.json')) continue;
    const vm = n.slice(0, -'.json'.length);
    const at = path.join(dir, n);
    if (!nodeName.safeParse(vm).success && !linkNameSchema.safeParse(vm).success) recordFail(file, `has a VM's record ${at} whose name is not a VM's`);
    const v = readJson(file, at);
    if (reservedKeyOf(v, 'runs') !== undefined) recordFail(file, `has a VM's record ${at} with a reserved run name`);
    const r = vmFileSchema.safeParse(v);
    if (!r.success) recordFail(file, `has a VM's record ${at} that is not one (${firstIssue(r.error)})`);
    if (r.data.vm !== vm) recordFail(file, `has a VM's record ${at} of VM ${JSON.stringify(r.data.vm)}`);
    byVm.push([vm, fs.statSync(at).mtimeMs, r.data.runs]);
  }
  for (const [vm, , runs] of byVm.sort((a, b) => a[1] - b[1])) for (const [run, e] of Object.entries(runs)) rec.newest[recordKey(vm, run)] = e;
  return rec;
}

/** The witness's own record, written durably (at a first start and when an earlier version's file is read). */
function saveInstance(file: string, rec: WitnessRecord): void {
  const body = { format: 2, instance: rec.instance, createdAt: rec.createdAt, ...(Object.keys(rec.legacy).length ? { legacy: rec.legacy } : {}) };
  writeFileAtomic(file, JSON.stringify(body) + '\n', { durable: true, mode: 0o600 });
}

/** VM `vm`'s record as it is in `newest`, for its file. */
function vmRecordText(vm: string, newest: Record<string, Epoch>): string {
  const runs: Record<string, Epoch> = {};
  for (const run of runsOfRecord(newest, vm)) runs[run] = newest[recordKey(vm, run)]!;
  return JSON.stringify({ vm, runs }) + '\n';
}

function runsOfRecord(newest: Record<string, Epoch>, vm: string): string[] {
  const prefix = `${vm}/`;
  return Object.keys(newest)
    .filter((k) => k.startsWith(prefix))
    .map((k) => k.slice(prefix.length));
}

/**
 * A run named like a property of Object.prototype ('__proto__', 'constructor'…)
 * is refused in a record file. (Runs are UUIDs made by `up`; only a broken
 * or hostile writer makes such a name.)
 */
function isReservedRun(run: string): boolean {
  return run in Object.prototype;
}

// ---- who a client is ----

/**
 * A VM's own key at the witness: HMAC-SHA256(the witness's secret, "lockstep
 * witness|" + VM), hex. `lockstep witness-key` prints it for a VM file
 * (agents.witnessKey); the agents of that VM prove it under the name
 * "VM.NODE", and the witness lets such a link ask for that VM's lease only.
 * So VMs that share a witness need not share a secret: each VM's agents'
 * secret (and the data plane's key derived from it) stays its own.
 */
export function witnessKeyFor(witnessSecret: string, vm: string): string {
  return crypto.createHmac('sha256', witnessSecret).update(`lockstep witness|${vm}`).digest('hex');
}

/** The name an agent of VM `vm` with the VM's own witness key gives the witness. */
export function witnessClientName(vm: string, node: string): string {
  return `${vm}.${node}`;
}

/**
 * Who a client of the witness is, from the name it proved: a node of one VM
 * ("VM.NODE", proven with that VM's key), or a node of any VM (a plain node
 * name, proven with the witness's own secret); undefined for any other name.
 */
export function witnessClientOf(name: string): { vm: string | null; node: string } | undefined {
  const parts = name.split('.');
  if (parts.length === 1) return { vm: null, node: name };
  const isName = (x: string) => nodeName.safeParse(x).success;
  if (parts.length === 2 && isName(parts[0]!) && isName(parts[1]!)) return { vm: parts[0]!, node: parts[1]! };
  return undefined;
}

// ---- the server ----

export interface WitnessOptions {
  secret: string;
  host: string;
  port: number;
  /** No grants for this long after start (≥ the longest lease in use). Default DEFAULT_GRACE_MS. */
  graceMs?: number;
  /**
   * The witness's own record (its identity); the VMs' records are kept beside it, one small file per VM, in
   * `stateFile.d/`. Without it they live in memory only.
   */
  stateFile?: string;
  log?: (msg: string) => void;
}

export interface WitnessStatus {
  /** This witness's identity: made at its first start, kept in its record (a new one means the record was lost). */
  instance: string;
  /** The leases held now, per VM. */
  leases: Record<string, { holder: string; remainingMs: number }>;
  /** The newest disk epoch recorded, per VM and run. */
  records: Record<string, Record<string, Epoch>>;
}

/** How long stop() waits for record writes under way. */
const STOP_WAIT_MS = 5000;
/** Requests of one VM kept while its record is being written; more are refused (the witness is not keeping up). */
export const MAX_WAITING_PER_VM = 32;
/** Refused connections and messages logged at most this many per REFUSALS_WINDOW_MS; the rest are counted. */
export const REFUSALS_LOGGED = 20;
export const REFUSALS_WINDOW_MS = 10_000;

type ServerLink = Link<WitnessRequest, WitnessReply>;

export class Witness {
  private st: WitnessState;
  private server: net.Server | undefined;
  private readonly links = new Set<ServerLink>();
  private readonly graceMs: number;
  private instance = '';
  /** The VMs whose record is being written, and the requests of each waiting for it, oldest first. */
  private readonly writing = new Map<string, Array<{ l: ServerLink; req: WitnessRequest }>>();
  /** Refusals are logged under a budget: a flood of hostile connections costs a few lines, never the disk. */
  private readonly sayRefusal = budgeted(new LogBudget({ perWindow: REFUSALS_LOGGED, windowMs: REFUSALS_WINDOW_MS, now: () => performance.now() }), (line) => this.say(line));

  constructor(private readonly o: WitnessOptions) {
    this.graceMs = o.graceMs ?? DEFAULT_GRACE_MS;
    if (!Number.isFinite(this.graceMs) || this.graceMs < 0) {
      throw new LockstepError(`the witness's grace period must be a number of milliseconds ≥ 0, not ${o.graceMs}`, { hint: 'e.g. --grace-ms 6000 (at least the longest lease)' });
    }
    this.st = initWitness(performance.now(), this.graceMs);
  }

  /**
   * Loads the record (throws LockstepError if it is unusable; writes the
   * witness's own record at a first start), then listens. The grace period
   * starts now.
   */
  async start(): Promise<void> {
    if (this.server) throw new LockstepError('the witness is already started');
    let rec: WitnessRecord = { instance: crypto.randomUUID(), createdAt: new Date().toISOString(), newest: {}, legacy: {}, fresh: true, migrated: false };
    if (this.o.stateFile) {
      rec = loadWitnessRecord(this.o.stateFile);
      fs.mkdirSync(witnessVmsDir(this.o.stateFile), { recursive: true, mode: 0o700 });
      if (rec.fresh || rec.migrated) saveInstance(this.o.stateFile, rec);
    }
    this.instance = rec.instance;
    this.st = initWitness(performance.now(), this.graceMs, rec.newest, rec.legacy);
    this.server = await listenLinks({
      name: WITNESS_NAME,
      secret: this.o.secret,
      secretFor: (client) => {
        const who = witnessClientOf(client);
        return !who ? undefined : who.vm ? witnessKeyFor(this.o.secret, who.vm) : this.o.secret;
      },
      host: this.o.host,
      port: this.o.port,
      inbound: witnessRequestSchema,
      outbound: witnessReplySchema,
      onLink: (l) => this.onLink(l),
      onRefuse: (remote, why, peer) => this.sayRefusal(`refused ${remote}${peer === undefined ? '' : ` (${peer})`}: ${why}`),
    });
    const vms = new Set(Object.keys(rec.newest).map((k) => k.slice(0, k.indexOf('/')))).size;
    const runs = Object.keys(rec.newest).length;
    this.say(
      `witness ${rec.instance} listening on ${this.o.host}:${this.port}; no grants for ${this.graceMs} ms; ` +
        (!this.o.stateFile
          ? 'no state file: the record lives in memory only'
          : rec.fresh
            ? `a new witness (no record in ${this.o.stateFile}): it vouches for no run yet, and grants a VM's lease once both of its nodes have spoken`
            : `${runs} run(s) of ${vms} VM(s) on record in ${this.o.stateFile}` +
              (rec.migrated ? `; ${Object.keys(rec.legacy).length} run(s) of an earlier version's record kept as a floor` : '')),
    );
  }

  get port(): number {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a.port : this.o.port;
  }

  state(): WitnessStatus {
    const now = performance.now();
    const leases: WitnessStatus['leases'] = {};
    for (const lease of Object.keys(this.st.holders)) {
      const h = holderOf(this.st, lease, now);
      if (h) leases[lease] = { holder: h.node, remainingMs: h.remainingMs };
    }
    const records: WitnessStatus['records'] = {};
    for (const [key, e] of Object.entries(this.st.newest)) {
      const { vm, run } = splitRecordKey(key);
      (records[vm] ??= {})[run] = e;
    }
    return { instance: this.instance, leases, records };
  }

  async stop(): Promise<void> {
    for (const l of this.links) l.close('witness stopping');
    this.links.clear();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((r) => server.close(() => r()));
    // Writes under way finish (their answers go nowhere): the next start reads a whole record. Bounded: a disk that
    // hangs does not hang the stop (the temporary file is all a crash then leaves).
    for (let waited = 0; this.writing.size && waited < STOP_WAIT_MS; waited += 5) await new Promise((r) => setTimeout(r, 5));
  }

  private say(msg: string): void {
    try {
      this.o.log?.(msg);
    } catch {
      // A failing logger must not take the witness down.
    }
  }

  private onLink(l: ServerLink): void {
    this.links.add(l);
    l.on('close', () => this.links.delete(l));
    l.on('message', (req) => this.onRequest(l, req));
  }

  /**
   * One request: refused if the link may not touch its VM; else decided now,
   * or, while that VM's record is being written, once it is (in order).
   * Never throws: an exception here would close the link and surface as
   * uncaught.
   */
  private onRequest(l: ServerLink, req: WitnessRequest): void {
    try {
      const now = performance.now();
      // The handshake admitted only names witnessClientOf reads.
      const who = witnessClientOf(l.peer)!;
      if (who.vm !== null && req.lease !== who.vm) return this.refuse(l, req, now, `this link proved VM ${who.vm}'s key: it may not touch VM ${req.lease}'s lease`);
      const waiting = this.writing.get(req.lease);
      if (waiting) {
        if (waiting.length >= MAX_WAITING_PER_VM) return this.refuse(l, req, now, `busy: ${MAX_WAITING_PER_VM} requests of VM ${req.lease} wait for its record to be written`);
        waiting.push({ l, req });
        return;
      }
      this.decide(l, req, who.node, now);
    } catch (err) {
      // Not expected either: keep running, say so.
      this.say(`internal error answering ${l.peer}: ${errorMessage(err)}`);
      l.close(`internal error: ${clip(errorMessage(err), 200)}`);
    }
  }

  /**
   * Decides (witness-core); a decision that changed the VM's record is
   * written to its file (durably, off the event loop) before it takes
   * effect and its answer goes out. Nothing changes unless the answer can
   * be sent and the record is on disk.
   */
  private decide(l: ServerLink, req: WitnessRequest, node: string, now: number): void {
    const tr = witnessStep(this.st, now, node, req);
    const valid = witnessReplySchema.safeParse(tr.reply);
    if (!valid.success) {
      // Not expected (witness-core answers within the schema): refuse rather than change anything unanswered.
      return this.refuse(l, req, now, `witness internal error: cannot answer (${describeIssues(valid.error)})`);
    }
    const vm = tr.changedVm;
    if (!tr.persist || vm === null || !this.o.stateFile) {
      this.st = tr.state;
      if (tr.log) this.say(tr.log);
      l.send(tr.reply);
      return;
    }
    this.writing.set(vm, []);
    const file = path.join(witnessVmsDir(this.o.stateFile), `${vm}.json`);
    writeFileDurable(file, vmRecordText(vm, tr.state.newest))
      .then(
        () => {
          this.st = withVmOf(this.st, tr.state, vm);
          if (tr.log) this.say(tr.log);
          l.send(tr.reply);
        },
        (err: unknown) => this.refuse(l, req, performance.now(), `witness cannot record: ${errorMessage(err)}`),
      )
      .catch((err: unknown) => this.say(`internal error answering ${l.peer}: ${errorMessage(err)}`))
      .finally(() => {
        const waiting = this.writing.get(vm) ?? [];
        this.writing.delete(vm);
        for (const w of waiting) if (w.l.isOpen) this.onRequest(w.l, w.req);
      });
  }

  /** Answers `req` with a refusal, the state unchanged (a release or query: no answer, the link closes). */
  private refuse(l: ServerLink, req: WitnessRequest, now: number, why: string): void {
    this.sayRefusal(`refused ${l.peer}'s ${req.t} ${req.id}: ${why}`);
    if (req.t !== 'acquire') {
      l.close(clip(why, 200));
      return;
    }
    const known = req.disk ? newestOf(this.st, req.lease, req.disk.run) : undefined;
    const reply: WitnessReply = {
      t: 'lease',
      re: req.id,
      granted: false,
      holder: holderOf(this.st, req.lease, now)?.node ?? null,
      reason: clip(why, 500),
      newest: known && epochSchema.safeParse(known).success ? known : null,
    };
    l.send(reply);
  }
}

// ---- the agent's end ----

export interface WitnessConnectionOptions {
  /** Our node's name, proven to the witness. */
  name: string;
  secret: string;
  host: string;
  port: number;
  /** Bind our end to this address (choose the path/NIC). */
  localAddress?: string;
  /** Every reply of the witness. */
  onReply: (r: WitnessReply) => void;
  /**
   * Something that must not happen with a well-configured pair: the
   * handshake failed (wrong secret, not a lockstep witness), the server is
   * not named 'witness', the witness sent a message we refuse, or a request
   * could not be sent (invalid).
   */
  onRefuse?: (why: string) => void;
  /** A connection attempt failed (its queue is dropped), or the open link closed. */
  onDown?: (why: string) => void;
  /** Bounds the connect, then the handshake, each. Default: link.ts's HANDSHAKE_TIMEOUT_MS. */
  connectTimeoutMs?: number;
  /**
   * A link on which requests have gone unanswered this long is taken for dead (a witness host that vanished
   * without a reset) and opened anew. Default 3000.
   */
  idleMs?: number;
}

/** Requests kept while a connection is being opened; older ones are dropped. */
export const MAX_QUEUED = 8;
/** Connection attempts start at most this often. */
export const RECONNECT_MS = 200;

type ClientLink = Link<WitnessReply, WitnessRequest>;

/**
 * One link to the witness, opened on demand. send() never throws and never
 * waits: it sends on the open link, or queues the request and opens one.
 * Replies go to onReply; matching them to requests (by `re`) and timing
 * requests out is the caller's business.
 */
export class WitnessConnection {
  private link: ClientLink | undefined;
  private connecting = false;
  private queue: WitnessRequest[] = [];
  private lastAttempt = -Infinity;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  private lastErr: string | undefined;
  /** The oldest request sent on the open link since its last reply. */
  private unansweredSince: number | undefined;

  constructor(private readonly o: WitnessConnectionOptions) {}

  get connected(): boolean {
    return this.link?.isOpen ?? false;
  }

  /** Why the last connection attempt failed or the last link closed; undefined once connected. */
  get lastError(): string | undefined {
    return this.lastErr;
  }

  send(req: WitnessRequest): void {
    if (this.closed) return;
    const idleMs = this.o.idleMs ?? 3000;
    if (this.link?.isOpen && this.unansweredSince !== undefined && performance.now() - this.unansweredSince > idleMs) {
      this.link.close(`no answer for ${Math.round(performance.now() - this.unansweredSince)} ms: opening a new link`);
    }
    if (this.link?.isOpen) {
      this.unansweredSince ??= performance.now();
      this.transmit(this.link, req);
      return;
    }
    this.queue.push(req);
    if (this.queue.length > MAX_QUEUED) this.queue.splice(0, this.queue.length - MAX_QUEUED);
    this.attempt();
  }

  close(): void {
    this.closed = true;
    this.queue = [];
    clearTimeout(this.retry);
    this.retry = undefined;
    this.link?.close('closed locally');
    this.link = undefined;
  }

  private where(): string {
    return `${this.o.host}:${this.o.port}`;
  }

  private report(cb: ((why: string) => void) | undefined, why: string): void {
    try {
      cb?.(why);
    } catch {
      // The caller's logger must not break the connection.
    }
  }

  private transmit(l: ClientLink, req: WitnessRequest): void {
    try {
      l.send(req);
    } catch (err) {
      this.report(this.o.onRefuse, `request not sent to the witness: ${errorMessage(err)}`);
    }
  }

  private attempt(): void {
    if (this.closed || this.connecting || this.link?.isOpen || this.retry) return;
    const wait = this.lastAttempt + RECONNECT_MS - performance.now();
    if (wait > 0) {
      this.retry = setTimeout(() => {
        this.retry = undefined;
        this.attempt();
      }, wait);
      return;
    }
    this.lastAttempt = performance.now();
    this.connecting = true;
    let p: Promise<ClientLink>;
    try {
      p = connectLink({
        name: this.o.name,
        secret: this.o.secret,
        host: this.o.host,
        port: this.o.port,
        localAddress: this.o.localAddress,
        timeoutMs: this.o.connectTimeoutMs,
        inbound: witnessReplySchema,
        outbound: witnessRequestSchema,
        onRefuse: (_remote, why) => this.report(this.o.onRefuse, `refused a message from the witness at ${this.where()}: ${why}`),
      });
    } catch (err) {
      p = Promise.reject(err); // e.g. an invalid own name: fails like any attempt
    }
    p.then(
      (l) => this.opened(l),
      (err: unknown) => {
        this.connecting = false;
        this.failed(`cannot connect to the witness at ${this.where()}: ${errorMessage(err)}`, err instanceof LockstepError);
      },
    );
  }

  /** A failed attempt: the queue goes (the caller times its requests out). */
  private failed(why: string, refusal: boolean): void {
    this.queue = [];
    this.lastErr = why;
    if (this.closed) return;
    if (refusal) this.report(this.o.onRefuse, why);
    this.report(this.o.onDown, why);
  }

  private opened(l: ClientLink): void {
    this.connecting = false;
    if (this.closed) {
      l.close('closed locally');
      return;
    }
    if (l.peer !== WITNESS_NAME) {
      l.close(`not the witness (${l.peer})`);
      this.failed(`${this.where()} is "${l.peer}", not the witness: check agents.witness`, true);
      return;
    }
    this.link = l;
    this.lastErr = undefined;
    this.unansweredSince = undefined;
    // A throwing onReply closes the link and surfaces as uncaught (link.ts): a bug of the caller.
    l.on('message', (r) => {
      this.unansweredSince = undefined;
      this.o.onReply(r);
    });
    l.on('close', (why) => {
      if (this.link !== l) return;
      this.link = undefined;
      this.lastErr = `the link to the witness at ${this.where()} closed: ${why}`;
      if (!this.closed) this.report(this.o.onDown, this.lastErr);
    });
    const queued = this.queue;
    this.queue = [];
    if (queued.length) this.unansweredSince = performance.now();
    for (const req of queued) this.transmit(l, req);
  }
}

/** The built-in witness as a VM's arbiter: its requests, named with the VM's lease, on one WitnessConnection. */
export class WitnessArbiter implements Arbiter {
  readonly conn: WitnessConnection;

  constructor(
    private readonly lease: string,
    o: WitnessConnectionOptions,
  ) {
    this.conn = new WitnessConnection(o);
  }

  acquire(id: string, ttlMs: number, disk: Epoch | null, next: Epoch | null): void {
    this.conn.send({ t: 'acquire', id, lease: this.lease, ttlMs, disk, next });
  }

  release(id: string): void {
    this.conn.send({ t: 'release', id, lease: this.lease });
  }

  query(id: string, run: string | null, disk?: Epoch | null): void {
    this.conn.send({ t: 'query', id, lease: this.lease, run, ...(disk === undefined ? {} : { disk }) });
  }

  close(): void {
    this.conn.close();
  }
}

// ---- a promise-based client (tests, tools) ----

type Body<T> = T extends unknown ? Omit<T, 'id' | 'lease'> : never;
export type WitnessStateReply = Extract<WitnessReply, { t: 'state' }>;

/**
 * Requests and their replies as promises, over one WitnessConnection. A
 * request rejects with TimeoutError if no reply comes in time, or with
 * LockstepError as soon as the connection fails or is refused.
 */
export class WitnessClient {
  private readonly conn: WitnessConnection;
  private readonly pending = new Map<string, { resolve: (r: WitnessReply) => void; reject: (e: Error) => void }>();
  private seq = 0;
  /** The VM whose lease this client asks about. */
  private readonly lease: string;
  /** The refusals reported by the connection, oldest first. */
  readonly refusals: string[] = [];

  constructor(o: Omit<WitnessConnectionOptions, 'onReply' | 'onRefuse' | 'onDown'> & { lease?: string }) {
    this.lease = o.lease ?? 'vm';
    this.conn = new WitnessConnection({
      ...o,
      onReply: (r) => {
        const p = this.pending.get(r.re);
        if (!p) return; // timed out already
        this.pending.delete(r.re);
        p.resolve(r);
      },
      onRefuse: (why) => this.refusals.push(why),
      onDown: (why) => this.failAll(why),
    });
  }

  get connected(): boolean {
    return this.conn.connected;
  }

  request(body: Body<WitnessRequest>, timeoutMs = 1000): Promise<WitnessReply> {
    const id = `c${++this.seq}`;
    return new Promise<WitnessReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new TimeoutError(`the witness's reply to ${body.t} ${id}`, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.conn.send({ ...body, id, lease: this.lease } as WitnessRequest);
    });
  }

  /** Asks for (or renews) the lease for a node whose disk is `disk`; with `next`, records that new epoch with the grant. */
  async acquire(ttlMs: number, disk: Epoch | null, next: Epoch | null = null, timeoutMs = 1000): Promise<LeaseReply> {
    return expect(await this.request({ t: 'acquire', ttlMs, disk, next }, timeoutMs), 'lease');
  }

  async release(timeoutMs = 1000): Promise<void> {
    expect(await this.request({ t: 'release' }, timeoutMs), 'released');
  }

  async query(run: string | null = null, timeoutMs = 1000, disk?: Epoch | null): Promise<WitnessStateReply> {
    return expect(await this.request({ t: 'query', run, ...(disk === undefined ? {} : { disk }) }, timeoutMs), 'state');
  }

  close(): void {
    this.conn.close();
    this.failAll('witness client closed');
  }

  private failAll(why: string): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(new LockstepError(why));
  }
}

function expect<K extends WitnessReply['t']>(r: WitnessReply, t: K): Extract<WitnessReply, { t: K }> {
  if (r.t !== t) throw new LockstepError(`the witness answered ${r.t} where ${t} was expected`);
  return r as Extract<WitnessReply, { t: K }>;
}

