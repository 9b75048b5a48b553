/**
 * Failover, as in the COLO documentation: "Secondary Failover" when the
 * primary died (the secondary takes over and prepares to become a primary),
 * "Primary Failover" when the secondary died (the primary carries on alone).
 * Each step is time-bounded; a step that fails names itself.
 *
 * Every step is safe to run again (a retry from `fromStep` after a lost
 * reply): object-del, chardev-remove, chardev-add, x-blockdev-change and
 * drive_del first ask QEMU whether their effect is already there (steps.ts);
 * nbd-server-stop takes QEMU's "NBD server not running" as done;
 * x-colo-lost-heartbeat takes "The feature 'colo' is not enabled" (the node
 * left COLO) as done; hostfwd_add looks for the same forward in `info
 * usernet`; yank is harmless to repeat (instances that are gone are skipped).
 */
import type { QmpCommands } from '../qmp/client.js';
import { QmpCommandError } from '../qmp/errors.js';
import { IDS, localProxyAddress, peerTlsCreds, type ColoEndpoints, type HostForward } from '../qemu/cmdline.js';
import { runSteps, hasObject, hasChardev, hasBlockNode, hasHostForward, isQuorumChild, type Step, type StepRecord } from './steps.js';

const STEP_MS = 5_000;

export const SECONDARY_FAILOVER = 'secondary failover';
export const PRIMARY_FAILOVER = 'primary failover';

/** x-colo-lost-heartbeat, tolerating a node that already left COLO (by itself, or by an earlier run of this step). */
async function lostHeartbeat(qmp: QmpCommands): Promise<void> {
  try {
    await qmp.execute('x-colo-lost-heartbeat');
  } catch (err) {
    // QEMU 7.2 (migration/colo-failover.c): "The feature 'colo' is not enabled" when the COLO mode is none.
    if (err instanceof QmpCommandError && /not enabled|not in COLO/i.test(err.desc)) return;
    throw err;
  }
}

/** nbd-server-stop, tolerating a server that is stopped already (QEMU 7.2 blockdev-nbd.c: "NBD server not running"). */
async function nbdServerStop(qmp: QmpCommands): Promise<void> {
  try {
    await qmp.execute('nbd-server-stop');
  } catch (err) {
    if (err instanceof QmpCommandError && /NBD server not running/i.test(err.desc)) return;
    throw err;
  }
}

/** object-del of `id`, skipped when it is gone already. */
export function objectDelStep(qmp: QmpCommands, id: string, timeoutMs: number): Step {
  return { name: `object-del ${id}`, timeoutMs, done: async () => !(await hasObject(qmp, id)), run: () => qmp.execute('object-del', { id }) };
}

function chardevRemoveStep(qmp: QmpCommands, id: string, timeoutMs: number): Step {
  return { name: `chardev-remove ${id}`, timeoutMs, done: async () => !(await hasChardev(qmp, id)), run: () => qmp.execute('chardev-remove', { id }) };
}

function chardevAddStep(qmp: QmpCommands, id: string, host: string, port: number, server: boolean, timeoutMs: number, tls: { 'tls-creds'?: string } = {}): Step {
  return socketChardevAddStep(qmp, id, { type: 'inet', data: { host, port: String(port) } }, server, timeoutMs, tls);
}

/** chardev-add of a socket chardev at `addr` (SocketAddressLegacy: inet, or the unix socket of the primary's local proxy). */
function socketChardevAddStep(qmp: QmpCommands, id: string, addr: ReturnType<typeof localProxyAddress>, server: boolean, timeoutMs: number, tls: { 'tls-creds'?: string } = {}): Step {
  return {
    name: `chardev-add ${id}`,
    timeoutMs,
    done: () => hasChardev(qmp, id),
    run: () => qmp.execute('chardev-add', { id, backend: { type: 'socket', data: { addr, server, ...(server ? { wait: false } : {}), ...tls } } }),
  };
}

/**
 * The primary's side of the replication child taken off the quorum and
 * deleted (Primary Failover; also taking a resume back). Skipped when the
 * replication node is no quorum child any more / gone.
 */
export function detachReplicationSteps(qmp: QmpCommands, timeoutMs: number): Step[] {
  return [
    {
      name: 'x-blockdev-change remove replication child',
      timeoutMs,
      done: async () => {
        if (!(await hasBlockNode(qmp, IDS.replicationNode))) return true;
        // x-debug-query-block-graph not understood: run it, its own answer decides.
        return !(await isQuorumChild(qmp, IDS.disk, IDS.replicationNode).catch(() => true));
      },
      run: async () => {
        try {
          await qmp.execute('x-blockdev-change', { parent: IDS.disk, child: 'children.1' });
        } catch (err) {
          // QEMU 7.2 blockdev.c: "Node '%s' does not have child '%s'": the child is off the quorum already.
          if (err instanceof QmpCommandError && /does not have child/i.test(err.desc)) return;
          throw err;
        }
      },
    },
    {
      name: `drive_del ${IDS.replicationNode}`,
      timeoutMs,
      done: async () => !(await hasBlockNode(qmp, IDS.replicationNode)),
      run: async () => {
        const out = (await qmp.hmp(`drive_del ${IDS.replicationNode}`)).trim();
        if (out) throw new Error(`drive_del: ${out}`);
      },
    },
  ];
}

type YankInstance = { type: 'migration' } | { type: 'chardev'; id: string } | { type: 'block-node'; 'node-name': string };

function yankLabel(i: YankInstance): string {
  return i.type === 'chardev' ? `chardev ${i.id}` : i.type === 'block-node' ? `block-node ${i['node-name']}` : 'migration';
}

/**
 * Shuts down this node's connections to its peer with QMP yank, out of band.
 * For a peer that vanished without a reset (a partition, a powered-off host):
 * QEMU 7.2 waits on such connections forever (the COLO threads; a blocking
 * chardev write that stalls the main loop, and with it every other command;
 * NBD requests). Yanks the migration stream, the given chardevs and every NBD
 * client node; instances that do not exist are skipped. Returns what it yanked.
 * Which instances there are is asked out of band too: the main loop is stuck
 * when we yank, and the NBD client's node has a name QEMU made up
 * (`drive_add`), which only query-yank tells. Asked in band, the question
 * timed out, the NBD client was left alone, and a checkpoint that waited for
 * its requests (the replication cable cut in the middle of one: bdrv_drain_all
 * in vm_stop, under the big lock) held the main loop until the watchdog ended
 * QEMU and the VM restarted from its disk (outage bench, a replication cut).
 */
async function yankPeerLinks(qmp: QmpCommands, chardevs: string[]): Promise<string[]> {
  let instances: YankInstance[] = [{ type: 'migration' }, ...chardevs.map((id) => ({ type: 'chardev' as const, id }))];
  try {
    const all = await qmp.execute<YankInstance[]>('query-yank', undefined, { oob: qmp.oobEnabled, timeoutMs: 1000 });
    const present = new Set(all.map(yankLabel));
    instances = [...instances.filter((i) => present.has(yankLabel(i))), ...all.filter((i) => i.type === 'block-node')];
  } catch {
    // The main loop is stuck (which is why we yank): go by what we know is there.
  }
  const done: string[] = [];
  for (const i of instances) {
    try {
      await qmp.execute('yank', { instances: [i] }, { oob: qmp.oobEnabled, timeoutMs: 2000 });
      done.push(yankLabel(i));
    } catch {
      // Not there (any more): nothing to unblock.
    }
  }
  return done;
}

/** On a primary: the migration stream, the proxy's sockets to the secondary, the NBD client. */
export function yankLinksToSecondary(qmp: QmpCommands): Promise<string[]> {
  return yankPeerLinks(qmp, [IDS.mirrorChardev, IDS.compare1]);
}

/** On a secondary: the incoming stream and the proxy's sockets to the primary. */
export function yankLinksToPrimary(qmp: QmpCommands): Promise<string[]> {
  return yankPeerLinks(qmp, [IDS.secChardevIn, IDS.secChardevOut]);
}

/**
 * Which of a node's links to its peer a yank shuts: those to the primary (the
 * node is, or was, a secondary) or those to the secondary.
 */
export type PeerLinks = 'to-primary' | 'to-secondary';

export function yankLinks(qmp: QmpCommands, links: PeerLinks): Promise<string[]> {
  return links === 'to-primary' ? yankLinksToPrimary(qmp) : yankLinksToSecondary(qmp);
}

/** The step that yanks `links` (harmless to repeat: instances that are gone are skipped). */
export function yankStep(qmp: QmpCommands, links: PeerLinks, timeoutMs = STEP_MS): Step {
  return { name: `yank the links ${links === 'to-primary' ? 'to the primary' : 'to the secondary'}`, timeoutMs, run: () => yankLinks(qmp, links) };
}

export interface SecondaryFailoverOptions {
  /** First yank the links to the primary (it vanished without a reset). */
  yank?: boolean;
  /** User-mode networking: forwards to re-create on the survivor (the dead primary released them). */
  forwards?: HostForward[];
  /** Re-create the primary-side chardevs so this node can later become a primary (last step of the documentation). */
  prepareAsPrimary?: ColoEndpoints;
}

export interface ProcedureRunOptions {
  /** Continue at this step (0-based; the steps before it are done): the stepsDone of an earlier attempt. */
  fromStep?: number;
  /** After each step that is done: how many are done now (where a retry would start). */
  onProgress?: (stepsDone: number) => void;
}

/** The steps of "Secondary Failover" (the same list for the same options). */
export function secondaryFailoverSteps(qmp: QmpCommands, o: SecondaryFailoverOptions = {}): Step[] {
  const steps: Step[] = [
    ...(o.yank ? [yankStep(qmp, 'to-primary')] : []),
    { name: 'nbd-server-stop', timeoutMs: STEP_MS, run: () => nbdServerStop(qmp) },
    { name: 'x-colo-lost-heartbeat', timeoutMs: STEP_MS, run: () => lostHeartbeat(qmp) },
    objectDelStep(qmp, IDS.secRedirectorOut, STEP_MS),
    objectDelStep(qmp, IDS.secRedirectorIn, STEP_MS),
    chardevRemoveStep(qmp, IDS.secChardevOut, STEP_MS),
    chardevRemoveStep(qmp, IDS.secChardevIn, STEP_MS),
  ];
  for (const f of o.forwards ?? []) {
    const rule = `${f.proto ?? 'tcp'}:${f.hostAddr}:${f.hostPort}-:${f.guestPort}`;
    steps.push({
      name: `hostfwd_add ${rule}`,
      timeoutMs: STEP_MS,
      done: () => hasHostForward(qmp, IDS.netdev, f),
      run: async () => {
        const out = (await qmp.hmp(`hostfwd_add ${IDS.netdev} ${rule}`)).trim();
        if (out) throw new Error(`hostfwd_add: ${out}`);
      },
    });
  }
  const e = o.prepareAsPrimary;
  if (e) {
    steps.push(
      // The two the next secondary connects to, from its host: with the pair's TLS.
      chardevAddStep(qmp, IDS.mirrorChardev, e.primaryHost, e.mirrorPort, true, STEP_MS, peerTlsCreds(e, 'server')),
      chardevAddStep(qmp, IDS.compare1, e.primaryHost, e.compareSecondaryPort, true, STEP_MS, peerTlsCreds(e, 'server')),
      // The primary's local proxy pairs: unix sockets in its private data directory, as on a primary's command line.
      socketChardevAddStep(qmp, IDS.compare0, localProxyAddress(e, 'compare0'), true, STEP_MS),
      socketChardevAddStep(qmp, IDS.compare0Client, localProxyAddress(e, 'compare0'), false, STEP_MS),
      socketChardevAddStep(qmp, IDS.compareOut, localProxyAddress(e, 'compareOut'), true, STEP_MS),
      socketChardevAddStep(qmp, IDS.compareOutClient, localProxyAddress(e, 'compareOut'), false, STEP_MS),
    );
  }
  return steps;
}

/** The primary died: resume on the secondary. */
export function secondaryFailover(
  qmp: QmpCommands,
  o: SecondaryFailoverOptions & ProcedureRunOptions = {},
  onStep?: (name: string, index: number, total: number) => void,
): Promise<StepRecord[]> {
  return runSteps(SECONDARY_FAILOVER, secondaryFailoverSteps(qmp, o), { fromStep: o.fromStep, onStep, onProgress: o.onProgress });
}

/** The steps of "Primary Failover" (the same list for the same options). */
export function primaryFailoverSteps(qmp: QmpCommands, o: { yank?: boolean } = {}): Step[] {
  return [
    ...(o.yank ? [yankStep(qmp, 'to-secondary')] : []),
    ...detachReplicationSteps(qmp, STEP_MS),
    ...[IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut].map((id) => objectDelStep(qmp, id, STEP_MS)),
    { name: 'x-colo-lost-heartbeat', timeoutMs: STEP_MS, run: () => lostHeartbeat(qmp) },
  ];
}

/** The secondary died: carry on, unprotected, on the primary. */
export function primaryFailover(
  qmp: QmpCommands,
  onStep?: (name: string, index: number, total: number) => void,
  o: { yank?: boolean } & ProcedureRunOptions = {},
): Promise<StepRecord[]> {
  return runSteps(PRIMARY_FAILOVER, primaryFailoverSteps(qmp, o), { fromStep: o.fromStep, onStep, onProgress: o.onProgress });
}
