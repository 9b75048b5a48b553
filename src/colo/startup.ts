/**
 * Entering COLO, as in the documentation's "Startup qemu" steps 3 and 4:
 * the secondary enables x-colo and exports its replica disk over NBD, then
 * the primary attaches the replication child to its quorum and migrates
 * with x-colo. Both then run the guest in COLO mode.
 */
import type { QmpCommands } from '../qmp/client.js';
import { IDS, peerTlsCreds, type ColoEndpoints } from '../qemu/cmdline.js';
import { runSteps, hasBlockNode, isQuorumChild, capabilityOn, type Step, type StepRecord } from './steps.js';
import { waitFor } from '../util/time.js';

const QMP_STEP_MS = 10_000;

export interface SecondaryStartup {
  nbdHost: string;
  nbdPort: number;
  /** The pair's data-plane TLS (the endpoints' tls): the NBD export then takes TLS clients only. */
  tls: ColoEndpoints['tls'];
}

export interface PrimaryStartup {
  secondaryHost: string;
  nbdPort: number;
  migrationPort: number;
  tls: ColoEndpoints['tls'];
}

function xColo(qmp: QmpCommands) {
  return qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-colo', state: true }] });
}

/** The steps of step 3, on a secondary that was just started (run once, on a fresh QEMU). */
export function secondaryEnterColoSteps(qmp: QmpCommands, s: SecondaryStartup): Step[] {
  return [
    { name: 'migrate-set-capabilities x-colo', timeoutMs: QMP_STEP_MS, run: () => xColo(qmp) },
    {
      name: 'nbd-server-start',
      timeoutMs: QMP_STEP_MS,
      run: () => qmp.execute('nbd-server-start', { addr: { type: 'inet', data: { host: s.nbdHost, port: String(s.nbdPort) } }, ...peerTlsCreds(s, 'server') }),
    },
    {
      name: `nbd-server-add ${IDS.secondaryParent}`,
      timeoutMs: QMP_STEP_MS,
      run: () => qmp.execute('nbd-server-add', { device: IDS.secondaryParent, writable: true }),
    },
  ];
}

/** Step 3, on the secondary. Must complete before the primary's step 4. */
export function secondaryEnterColo(qmp: QmpCommands, s: SecondaryStartup, onStep?: (name: string, index: number, total: number) => void): Promise<StepRecord[]> {
  return runSteps('secondary start-up', secondaryEnterColoSteps(qmp, s), { onStep });
}

/** The drive_add line that creates the primary's replication child (an NBD client to the secondary). */
export function replicationDriveAdd(secondaryHost: string, nbdPort: number, tls: ColoEndpoints['tls']): string {
  const creds = peerTlsCreds({ tls }, 'client')['tls-creds'];
  return (
    `drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,file.host=${secondaryHost},` +
    `file.port=${nbdPort},file.export=${IDS.secondaryParent},${creds ? `file.tls-creds=${creds},` : ''}node-name=${IDS.replicationNode}`
  );
}

/**
 * The replication child: an NBD client to the secondary's export, attached to
 * the primary's quorum (step 4; also resume replication). Safe to run again:
 * each step is skipped when its effect is there (the node exists; it is a
 * child of the quorum: attaching it twice would give the quorum a second
 * replication child).
 */
export function attachReplicationSteps(qmp: QmpCommands, secondaryHost: string, nbdPort: number, tls: ColoEndpoints['tls'], timeoutMs = QMP_STEP_MS): Step[] {
  return [
    {
      name: 'drive_add replication child',
      timeoutMs,
      done: () => hasBlockNode(qmp, IDS.replicationNode),
      run: async () => {
        const out = await qmp.hmp(replicationDriveAdd(secondaryHost, nbdPort, tls));
        if (out.trim()) throw new Error(`drive_add: ${out.trim()}`);
      },
    },
    {
      name: 'x-blockdev-change attach replication child',
      timeoutMs,
      done: () => isQuorumChild(qmp, IDS.disk, IDS.replicationNode),
      run: () => qmp.execute('x-blockdev-change', { parent: IDS.disk, node: IDS.replicationNode }),
    },
  ];
}

/** Migration states in which a `migrate` is under way (a second one would be refused). */
const MIGRATING = ['setup', 'active', 'device', 'pre-switchover', 'wait-unplug', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'cancelling'];

/**
 * Whether this node has started the migration into COLO already: a
 * migration under way, or COLO running with this node as its primary.
 * ("completed" does not count: a primary that failed over once reports the
 * migration of its earlier COLO run as completed.)
 */
export async function migrationIntoColoStarted(qmp: QmpCommands): Promise<boolean> {
  const mig = await qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: 5000 });
  if (mig.status && MIGRATING.includes(mig.status)) return true;
  if (mig.status !== 'colo') return false;
  return (await queryColoStatus(qmp)).mode === 'primary';
}

/** The migration's TLS credentials as QEMU has them ("" when none). */
async function migrationTlsCreds(qmp: QmpCommands): Promise<string> {
  const p = await qmp.execute<{ 'tls-creds'?: string }>('query-migrate-parameters', undefined, { timeoutMs: 5000 });
  return p['tls-creds'] ?? '';
}

/**
 * x-colo and the migration to the secondary that starts COLO (step 4; also
 * resume replication). Safe to run again. With TLS the outgoing migration
 * takes the client credentials (a node that was a secondary had the
 * server's, for its incoming migration).
 */
export function migrateIntoColoSteps(qmp: QmpCommands, secondaryHost: string, migrationPort: number, tls: ColoEndpoints['tls'], timeoutMs = QMP_STEP_MS): Step[] {
  const creds = peerTlsCreds({ tls }, 'client')['tls-creds'];
  const tlsSteps: Step[] = creds
    ? [
        {
          name: `migrate-set-parameters tls-creds ${creds}`,
          timeoutMs,
          done: async () => (await migrationTlsCreds(qmp)) === creds,
          run: () => qmp.execute('migrate-set-parameters', { 'tls-creds': creds }),
        },
      ]
    : [];
  return [
    ...tlsSteps,
    { name: 'migrate-set-capabilities x-colo', timeoutMs, done: () => capabilityOn(qmp, 'x-colo'), run: () => xColo(qmp) },
    { name: 'migrate', timeoutMs, done: () => migrationIntoColoStarted(qmp), run: () => qmp.execute('migrate', { uri: `tcp:${secondaryHost}:${migrationPort}` }) },
  ];
}

/** Step 4, on the primary. */
export function primaryEnterColo(qmp: QmpCommands, p: PrimaryStartup, onStep?: (name: string, index: number, total: number) => void): Promise<StepRecord[]> {
  return runSteps(
    'primary start-up',
    [...attachReplicationSteps(qmp, p.secondaryHost, p.nbdPort, p.tls), ...migrateIntoColoSteps(qmp, p.secondaryHost, p.migrationPort, p.tls)],
    { onStep },
  );
}

export interface ColoStatus {
  mode: 'primary' | 'secondary' | 'none';
  'last-mode': string;
  reason: string;
}

export function queryColoStatus(qmp: QmpCommands, timeoutMs = 5000): Promise<ColoStatus> {
  return qmp.execute<ColoStatus>('query-colo-status', undefined, { timeoutMs });
}

/** Waits until a node reports the given COLO mode and migration status "colo". */
export async function waitColoMode(qmp: QmpCommands, mode: 'primary' | 'secondary', timeoutMs: number): Promise<void> {
  await waitFor(
    `${mode} to enter COLO`,
    async () => {
      const st = await queryColoStatus(qmp);
      if (st.mode !== mode) return false;
      const mig = await qmp.execute<{ status?: string }>('query-migrate');
      return mig.status === 'colo';
    },
    { timeoutMs, intervalMs: 100 },
  );
}

/** Idle checkpoint period; QEMU 7.2 also takes a checkpoint at once when it is set. */
export function setCheckpointDelay(qmp: QmpCommands, ms: number): Promise<unknown> {
  return qmp.execute('migrate-set-parameters', { 'x-checkpoint-delay': ms });
}

/**
 * Takes a checkpoint now and waits until the primary resumes from it, so the
 * secondary holds the primary's current state. QEMU 7.2 checkpoints at once
 * when x-checkpoint-delay is set; newer QEMU at the latest after the delay.
 *
 * Worth doing once the guest's services are up: TCP connections opened while
 * the secondary still lagged behind (e.g. was still booting) stay slow, each
 * packet waiting for colo-compare's timeout.
 */
export async function checkpointNow(qmp: QmpCommands, delayMs: number): Promise<void> {
  const resumes = qmp.listen('RESUME');
  try {
    await setCheckpointDelay(qmp, delayMs);
    await resumes.next(delayMs + 15_000, 'a checkpoint to complete on the primary');
  } finally {
    resumes.close();
  }
}

/**
 * Sets the checkpoint period (QEMU 7.2 then checkpoints at once) and waits
 * until a checkpoint has completed on the primary: STOP, then RESUME. That a
 * checkpoint completes is what "protected" means. Throws TimeoutError.
 */
export async function firstCheckpoint(qmp: QmpCommands, delayMs: number): Promise<void> {
  const stops = qmp.listen('STOP');
  const resumes = qmp.listen('RESUME');
  try {
    await setCheckpointDelay(qmp, delayMs);
    await stops.next(delayMs + 15_000, 'a checkpoint to start on the primary');
    await resumes.next(15_000, 'the primary to resume after its checkpoint');
  } finally {
    stops.close();
    resumes.close();
  }
}
