/**
 * The simulated pair as lockstep itself would see it: a config file like
 * any other (parsed by config/load.ts, every default from its schema), from
 * which the agents' core configuration (node/timings.ts) and the procedures'
 * step lists (node/procedures.ts) derive as on real hosts, and the pair's
 * record (pair/state.ts) the step lists are built from.
 */
import { parseConfig, type ResolvedConfig } from '../config/load.js';
import { planPair, type Runtime } from '../pair/plan.js';
import { newPairState, nodeStateOf, type PairState } from '../pair/state.js';
import { coreConfig } from '../node/timings.js';
import type { ProcedureHost } from '../node/procedures.js';
import type { QmpCommands } from '../qmp/client.js';
import type { CoreConfig } from '../node/core/types.js';
import type { NodeName } from './schedule-types.js';

/** The VM's disk: what a new secondary's replica is made as large as. */
export const DISK_SIZE_BYTES = 64 * 2 ** 20;

/** The simulated pair's config: tap networking on a bridge, the agents' defaults, a witness or not, one or two heartbeat paths. */
export function simConfigText(o: { witness: boolean; paths: 1 | 2; leaseMs?: number }): string {
  // Two paths: the heartbeat network first, the replication network (the nodes' addresses) second, as the README
  // advises and as the model routes them (network.ts, pathLink): so the core's replicationPath is path 1.
  const links = o.paths === 2 ? `  links: { a: [10.0.2.1, 10.0.1.1], b: [10.0.2.2, 10.0.1.2] }\n` : '';
  return (
    'name: sim\n' +
    'vm:\n  memory: 128M\n  disk: { image: /sim/disk.qcow2 }\n  network: { mode: tap, bridge: br0, taps: { a: tap-a, b: tap-b } }\n' +
    'nodes:\n  - { name: a, address: 10.0.1.1 }\n  - { name: b, address: 10.0.1.2 }\n' +
    'agents:\n  secret: simulated-pair-secret-0123456789\n' +
    (o.witness ? '  witness: 10.0.3.3:7900\n' : '') +
    (o.leaseMs !== undefined ? `  leaseMs: ${o.leaseMs}\n` : '') +
    links
  );
}

export interface SimSetup {
  config: ResolvedConfig;
  /** The pair's record as `up` made it (a primary, b secondary). */
  pair: PairState;
  core: Record<NodeName, CoreConfig>;
  /** Whether each node's QEMU can pause before its switchover into COLO (its resume takes the live order). */
  pauseIntoColo: Record<NodeName, boolean>;
}

export function simSetup(o: { witness: boolean; paths: 1 | 2; leaseMs?: number; pauseIntoColo?: { a: boolean; b: boolean } }): SimSetup {
  const config = parseConfig(simConfigText(o), '/sim/sim.yaml', { separateHosts: true });
  const runtime: Runtime = { binary: '/sim/qemu-system-x86_64', accel: 'kvm', dataDirs: [], reconnectMs: true };
  const plan = planPair(config, runtime, 'a');
  const pair = newPairState(config, runtime, plan, [nodeStateOf(plan.primary, 100), nodeStateOf(plan.secondary, 101)], new Date(0));
  return {
    config,
    pair,
    core: { a: coreConfig(config, 'a', 'b', DISK_SIZE_BYTES), b: coreConfig(config, 'b', 'a', DISK_SIZE_BYTES) },
    pauseIntoColo: { a: o.pauseIntoColo?.a ?? false, b: o.pauseIntoColo?.b ?? false },
  };
}

function never(what: string): never {
  throw new Error(`the simulator builds procedures only to read their steps; ${what} was called`);
}

/** A QMP connection that is never asked anything: the simulator builds step lists with it to read them. */
export const unaskedQmp: QmpCommands = {
  execute: () => never('QMP execute'),
  hmp: () => never('QMP hmp'),
  listen: () => never('QMP listen'),
  get oobEnabled(): boolean {
    return never('QMP oobEnabled');
  },
};

/** The procedure host of node `name`, for building its step lists (nothing of it is ever run). */
export function unaskedHost(setup: SimSetup, name: NodeName): ProcedureHost {
  return {
    config: setup.config,
    name,
    pair: () => setup.pair,
    qmp: () => unaskedQmp,
    canPauseIntoColo: () => setup.pauseIntoColo[name],
    mayRunAlone: () => never('mayRunAlone'),
    endOurQemu: () => never('endOurQemu'),
    prepared: () => undefined,
    setPrepared: () => never('setPrepared'),
    dropPrepared: () => never('dropPrepared'),
    checkPreparedInColo: () => never('checkPreparedInColo'),
    adoptPrepared: () => never('adoptPrepared'),
    attach: () => never('attach'),
  };
}
