/**
 * The simulated witness: the real witness core (node/witness-core.ts) behind
 * its links, with its own clock, its durable record (written before it
 * answers, as witness.ts does), restarts, slowness, lost answers, and, for
 * the lease invariant, a ledger of every lease it ever granted (across its
 * restarts), in the simulation's real time.
 */
import { initWitness, recordKey, witnessStep, type WitnessState } from '../node/witness-core.js';
import { DEFAULT_GRACE_MS } from '../node/witness.js';
import type { Arbiter } from '../node/arbiter.js';
import type { WitnessRequest } from '../node/wire.js';
import type { Epoch } from '../pair/epoch.js';
import type { World, Host } from './world.js';
import type { SimAgent } from './agents.js';
import { witnessLink, type NodeName } from './schedule-types.js';

/** The VM's lease at the simulated witness. */
export const SIM_LEASE = 'vm';

export interface Grant {
  node: NodeName;
  /** Real time: from when the witness granted it until it ran out by the witness's clock. */
  from: number;
  until: number;
}

export class SimWitness {
  up: boolean;
  state: WitnessState;
  slowMs = 0;
  lossy = false;
  incarnation = 1;
  /** Its durable record (witness.json). */
  persisted: Record<string, Epoch> = {};
  /** Every lease granted, in real time (kept bounded: the newest ones). */
  readonly grants: Grant[] = [];
  private readonly lastOrder = new Map<string, number>();

  constructor(private readonly w: World) {
    this.up = w.sched.witness;
    this.state = initWitness(this.local(), 0);
  }

  /** The witness's monotonic clock. */
  local(): number {
    return this.w.now * this.w.sched.clocks.w;
  }

  /** The interface the agents' core asks through (node/arbiter.ts). */
  arbiter(h: Host, ag: SimAgent): Arbiter {
    return {
      acquire: (id, ttlMs, disk, next) => this.request(h, ag, { t: 'acquire', id, lease: SIM_LEASE, ttlMs, disk, next }),
      release: (id) => this.request(h, ag, { t: 'release', id, lease: SIM_LEASE }),
      query: (id, run, disk) => this.request(h, ag, { t: 'query', id, lease: SIM_LEASE, run, ...(disk === undefined ? {} : { disk }) }),
      close: () => {},
    };
  }

  private request(h: Host, ag: SimAgent, req: WitnessRequest): void {
    if (!this.w.sched.witness || !h.up) return;
    const link = witnessLink(h.name);
    const inc = this.incarnation;
    this.w.net.transmit(link, h.name, 'w', () => {
      if (!this.up || this.incarnation !== inc) return;
      // One link is served in order.
      const key = `witness<${h.name}`;
      const t = Math.max(this.w.now + (this.slowMs ? this.w.rng.witness.range(this.slowMs / 2, this.slowMs) : this.w.rng.witness.range(0.2, 2)), this.lastOrder.get(key) ?? 0);
      this.lastOrder.set(key, t);
      this.w.at(t, () => {
        if (!this.up || this.incarnation !== inc) return;
        const r = witnessStep(this.state, this.local(), h.name, req);
        this.state = r.state;
        if (r.persist) this.persisted = { ...r.state.newest };
        if (r.reply.t === 'lease' && r.reply.granted) this.ledger(h.name, r.reply.ttlMs ?? 0);
        if (r.reply.t === 'released') this.released(h.name);
        if (r.log) this.w.trace(`witness: ${r.log}`);
        if (this.lossy && this.w.rng.witness.chance(0.5)) return this.w.trace(`witness: answer to ${h.name} lost`);
        this.w.net.transmit(link, 'w', h.name, () => {
          if (h.agent?.boot === ag.boot) this.w.agents.input(h.name, { t: 'witness-reply', reply: r.reply });
        });
      });
    });
  }

  private ledger(node: NodeName, ttlMs: number): void {
    const until = this.w.now + ttlMs / this.w.sched.clocks.w;
    const last = this.grants.at(-1);
    if (last && last.node === node && last.until >= this.w.now) last.until = Math.max(last.until, until);
    else this.grants.push({ node, from: this.w.now, until });
    if (this.grants.length > 64) this.grants.splice(0, this.grants.length - 64);
  }

  private released(node: NodeName): void {
    const last = this.grants.at(-1);
    if (last && last.node === node && last.until > this.w.now) last.until = this.w.now;
  }

  /** Who holds the lease now, by the witness's own grants (across its restarts). */
  holderAt(t: number): NodeName | null {
    for (let i = this.grants.length - 1; i >= 0; i--) {
      const g = this.grants[i]!;
      if (g.from <= t && t < g.until) return g.node;
    }
    return null;
  }

  /** Started (again): no lease, its durable record, and a grace period; `amnesia`: its record is lost too. */
  start(amnesia = false): void {
    this.up = true;
    this.incarnation++;
    if (amnesia) this.persisted = {};
    this.state = initWitness(this.local(), DEFAULT_GRACE_MS, this.persisted);
    this.w.trace(`witness: (re)started${amnesia ? ' with nothing on record' : ''}`);
  }

  down(): void {
    this.up = false;
    this.incarnation++;
  }

  /** The newest epoch on record for the pair's run (what a node's disk must match to be the newest). */
  newest(run: string): Epoch | undefined {
    const k = recordKey(SIM_LEASE, run);
    return Object.hasOwn(this.persisted, k) ? this.persisted[k] : undefined;
  }
}
