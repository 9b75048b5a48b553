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

export interface SecondaryFailoverOptions {
  /** User-mode networking: forwards to re-create on the survivor (the dead primary released them). */
  forwards?: HostForward[];
  /** Re-create the primary-side chardevs so this node can later become a primary (last step of the documentation). */
  prepareAsPrimary?: ColoEndpoints;
}

/** The primary died: resume on the secondary. */
export function secondaryFailover(qmp: QmpClient, o: SecondaryFailoverOptions = {}, onStep?: (n: string) => void): Promise<StepRecord[]> {
  const steps: Step[] = [
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
export function primaryFailover(qmp: QmpClient, onStep?: (n: string) => void): Promise<StepRecord[]> {
  return runSteps(
    'primary failover',
    [
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
