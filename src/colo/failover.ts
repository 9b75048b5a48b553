/**
 * Failover, as in the COLO documentation: "Secondary Failover" when the
 * primary died (the secondary takes over and prepares to become a primary),
 * "Primary Failover" when the secondary died (the primary carries on alone).
 * Each step is time-bounded; a step that fails names itself.
 */
import type { QmpClient } from '../qmp/client.js';
import { QmpCommandError } from '../qmp/errors.js';
import { IDS, type ColoEndpoints, type HostForward } from '../qemu/cmdline.js';
import { runSteps, type Step, type StepRecord } from './steps.js';

const STEP_MS = 5_000;

/** x-colo-lost-heartbeat, tolerating a node that already left COLO by itself. */
async function lostHeartbeat(qmp: QmpClient): Promise<void> {
  try {
    await qmp.execute('x-colo-lost-heartbeat');
  } catch (err) {
    if (err instanceof QmpCommandError && /not enabled|not in COLO/i.test(err.desc)) return;
    throw err;
  }
}

function chardevAdd(qmp: QmpClient, id: string, host: string, port: number, server: boolean) {
  return qmp.execute('chardev-add', {
    id,
    backend: { type: 'socket', data: { addr: { type: 'inet', data: { host, port: String(port) } }, server, ...(server ? { wait: false } : {}) } },
  });
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
 */
async function yankPeerLinks(qmp: QmpClient, chardevs: string[]): Promise<string[]> {
  let instances: YankInstance[] = [{ type: 'migration' }, ...chardevs.map((id) => ({ type: 'chardev' as const, id }))];
  try {
    const all = await qmp.execute<YankInstance[]>('query-yank', undefined, { timeoutMs: 1000 });
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
export function yankLinksToSecondary(qmp: QmpClient): Promise<string[]> {
  return yankPeerLinks(qmp, [IDS.mirrorChardev, IDS.compare1]);
}

/** On a secondary: the incoming stream and the proxy's sockets to the primary. */
export function yankLinksToPrimary(qmp: QmpClient): Promise<string[]> {
  return yankPeerLinks(qmp, [IDS.secChardevIn, IDS.secChardevOut]);
}

export interface SecondaryFailoverOptions {
  /** First yank the links to the primary (it vanished without a reset). */
  yank?: boolean;
  /** User-mode networking: forwards to re-create on the survivor (the dead primary released them). */
  forwards?: HostForward[];
  /** Re-create the primary-side chardevs so this node can later become a primary (last step of the documentation). */
  prepareAsPrimary?: ColoEndpoints;
}

/** The primary died: resume on the secondary. */
export function secondaryFailover(qmp: QmpClient, o: SecondaryFailoverOptions = {}, onStep?: (n: string) => void): Promise<StepRecord[]> {
  const steps: Step[] = [
    ...(o.yank ? [{ name: 'yank the links to the primary', timeoutMs: STEP_MS, run: () => yankLinksToPrimary(qmp) }] : []),
    { name: 'nbd-server-stop', timeoutMs: STEP_MS, run: () => qmp.execute('nbd-server-stop') },
    { name: 'x-colo-lost-heartbeat', timeoutMs: STEP_MS, run: () => lostHeartbeat(qmp) },
    { name: `object-del ${IDS.secRedirectorOut}`, timeoutMs: STEP_MS, run: () => qmp.execute('object-del', { id: IDS.secRedirectorOut }) },
    { name: `object-del ${IDS.secRedirectorIn}`, timeoutMs: STEP_MS, run: () => qmp.execute('object-del', { id: IDS.secRedirectorIn }) },
    { name: `chardev-remove ${IDS.secChardevOut}`, timeoutMs: STEP_MS, run: () => qmp.execute('chardev-remove', { id: IDS.secChardevOut }) },
    { name: `chardev-remove ${IDS.secChardevIn}`, timeoutMs: STEP_MS, run: () => qmp.execute('chardev-remove', { id: IDS.secChardevIn }) },
  ];
  for (const f of o.forwards ?? []) {
    const rule = `${f.proto ?? 'tcp'}:${f.hostAddr}:${f.hostPort}-:${f.guestPort}`;
    steps.push({
      name: `hostfwd_add ${rule}`,
      timeoutMs: STEP_MS,
      run: async () => {
        const out = (await qmp.hmp(`hostfwd_add ${IDS.netdev} ${rule}`)).trim();
        if (out) throw new Error(`hostfwd_add: ${out}`);
      },
    });
  }
  const e = o.prepareAsPrimary;
  if (e) {
    steps.push(
      { name: `chardev-add ${IDS.mirrorChardev}`, timeoutMs: STEP_MS, run: () => chardevAdd(qmp, IDS.mirrorChardev, e.primaryHost, e.mirrorPort, true) },
      { name: `chardev-add ${IDS.compare1}`, timeoutMs: STEP_MS, run: () => chardevAdd(qmp, IDS.compare1, e.primaryHost, e.compareSecondaryPort, true) },
      { name: `chardev-add ${IDS.compare0}`, timeoutMs: STEP_MS, run: () => chardevAdd(qmp, IDS.compare0, e.primaryLocal, e.comparePrimaryPort, true) },
      { name: `chardev-add ${IDS.compare0Client}`, timeoutMs: STEP_MS, run: () => chardevAdd(qmp, IDS.compare0Client, e.primaryLocal, e.comparePrimaryPort, false) },
      { name: `chardev-add ${IDS.compareOut}`, timeoutMs: STEP_MS, run: () => chardevAdd(qmp, IDS.compareOut, e.primaryLocal, e.compareOutPort, true) },
      { name: `chardev-add ${IDS.compareOutClient}`, timeoutMs: STEP_MS, run: () => chardevAdd(qmp, IDS.compareOutClient, e.primaryLocal, e.compareOutPort, false) },
    );
  }
  return runSteps('secondary failover', steps, onStep);
}

/** The secondary died: carry on, unprotected, on the primary. */
export function primaryFailover(qmp: QmpClient, onStep?: (n: string) => void, o: { yank?: boolean } = {}): Promise<StepRecord[]> {
  return runSteps(
    'primary failover',
    [
      ...(o.yank ? [{ name: 'yank the links to the secondary', timeoutMs: STEP_MS, run: () => yankLinksToSecondary(qmp) }] : []),
      { name: 'x-blockdev-change remove replication child', timeoutMs: STEP_MS, run: () => qmp.execute('x-blockdev-change', { parent: IDS.disk, child: 'children.1' }) },
      {
        name: `drive_del ${IDS.replicationNode}`,
        timeoutMs: STEP_MS,
        run: async () => {
          const out = (await qmp.hmp(`drive_del ${IDS.replicationNode}`)).trim();
          if (out) throw new Error(`drive_del: ${out}`);
        },
      },
      ...[IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut].map((id) => ({
        name: `object-del ${id}`,
        timeoutMs: STEP_MS,
        run: () => qmp.execute('object-del', { id }),
      })),
      { name: 'x-colo-lost-heartbeat', timeoutMs: STEP_MS, run: () => lostHeartbeat(qmp) },
    ],
    onStep,
  );
}
