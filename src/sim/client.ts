/**
 * The simulated client: one request at a time to the VM (a write and its
 * answer), as the lab's client counts on the guest's disk. A request goes to
 * whichever node serves the VM on the LAN, waits while its write is blocked,
 * is answered once the answer may leave ([compare] in qemu.ts), and is given
 * up after 15 s; TCP retransmits a request whose VM died to whichever VM
 * serves next. An answered request is an acknowledged write: from then on
 * it must be on the disk of whichever node runs the VM.
 */
import type { World } from './world.js';
import type { SimQemu } from './qemu.js';

/** The client gives a request up after this long (and sends the next one). */
const REQUEST_TIMEOUT_MS = 15_000;

interface Request {
  n: number;
  startedAt: number;
  /** The write the serving VM made, and where. */
  write: number | null;
  on: SimQemu | null;
  /** Waiting for: a VM to serve it, its write (a silent replica), its answer (held by colo-compare), or the answer under way. */
  state: 'routing' | 'blocked' | 'held' | 'answering';
}

export class Client {
  private request: Request | null = null;
  private nextRequest = 1;
  failed = 0;
  /** No new request before this (the client-idle fault): the guest's disk and network are idle. */
  idleUntil = -Infinity;

  constructor(private readonly w: World) {}

  start(): void {
    this.w.at(0, () => this.tick());
  }

  /** QEMUs the client reaches, that run the VM as its writer. */
  serving(): SimQemu[] {
    const out: SimQemu[] = [];
    for (const h of Object.values(this.w.hosts)) {
      const q = h.qemu;
      if (!q || !this.w.qemu.writer(q) || this.w.qemu.stopped(q) || !h.tapOn) continue;
      if (!this.w.net.up(h.name === 'a' ? 'lan-a' : 'lan-b')) continue;
      out.push(q);
    }
    return out;
  }

  private tick(): void {
    if (!this.request && this.w.now < this.idleUntil) return void this.w.after(100, () => this.tick());
    if (!this.request) this.request = { n: this.nextRequest++, startedAt: this.w.now, write: null, on: null, state: 'routing' };
    const r = this.request;
    if (r.state === 'routing') {
      const s = this.serving();
      if (s.length) this.serve(r, s[0]!);
    } else if (r.state === 'blocked' && r.on) this.serve(r, r.on);
    if (this.request === r && this.w.now - r.startedAt > REQUEST_TIMEOUT_MS) {
      this.w.trace(`client: request ${r.n} timed out`);
      this.request = null;
    }
    this.w.after(this.request ? 200 : 100, () => this.tick());
  }

  private serve(r: Request, q: SimQemu): void {
    r.on = q;
    if (this.w.qemu.stopped(q)) return void (r.state = 'blocked');
    const res = this.w.qemu.write(q);
    if (res === 'blocked') return void (r.state = 'blocked');
    if (res === 'error') {
      // The guest got EIO: the request fails, nothing is acknowledged.
      this.failed++;
      this.w.trace(`client: request ${r.n} failed (the write failed on ${q.node})`);
      this.request = null;
      return;
    }
    r.write = res;
    if (this.w.qemu.writesAlone(q)) {
      r.state = 'answering';
      this.w.after(this.w.rng.client.range(2, 20), () => this.answer(r));
      return;
    }
    if (this.w.qemu.writer(q)) {
      // [compare] the secondary sends the same answer: it leaves, if the stream is still healthy then.
      r.state = 'answering';
      this.w.after(this.w.rng.client.range(10, 60), () => (this.w.qemu.writer(q) ? this.answer(r) : void (r.state = 'held')));
      return;
    }
    // COLO broken on this end, failover not done: the write landed locally [quorum], its answer is held [compare].
    r.state = 'held';
  }

  private answer(r: Request): void {
    if (this.request !== r || !r.on?.alive || r.write === null) return;
    const q = r.on;
    const h = this.w.hosts[q.node];
    // The answer needs the VM running and its way to the client.
    if (q.paused || this.w.qemu.stopped(q) || this.w.net.cutFrom(q.node === 'a' ? 'lan-a' : 'lan-b', q.node) || !h.tapOn) return void this.w.after(50, () => this.answer(r));
    if (!this.w.qemu.writer(q)) return void (r.state = 'held');
    this.w.acked.add(r.write);
    this.request = null;
    this.w.check.acknowledged(q, r.write);
  }

  /** A checkpoint completed on primary `pq`: what colo-compare held leaves ([compare]). */
  checkpointed(pq: SimQemu): void {
    const r = this.request;
    if (r && r.on === pq && r.state === 'held') this.answer(r);
  }

  /** The replication child of `pq` is gone (reset, yanked): a blocked write lands locally, its answer held ([quorum]). */
  replicaGone(pq: SimQemu): void {
    const r = this.request;
    if (r && r.on === pq && r.state === 'blocked') this.serve(r, pq);
  }

  /** colo-compare is gone from `q`, or `q` left COLO: held answers leave, blocked writes land. */
  released(q: SimQemu): void {
    const r = this.request;
    if (!r || r.on !== q) return;
    if (r.state === 'blocked') this.serve(r, q);
    if (this.request === r && r.state === 'held') this.answer(r);
  }

  /** The VM that had the request is gone: TCP retransmits it to whichever VM serves next, which executes it afresh. */
  qemuEnded(q: SimQemu): void {
    const r = this.request;
    if (!r || r.on !== q) return;
    r.on = null;
    r.write = null;
    r.state = 'routing';
  }
}
