/**
 * Host-loss figures (npm run bench; needs root for the lab's namespaces): two
 * VMs, web and db, on the daemons of two lab hosts that share nothing, both
 * with their primary on the same host, a client on the guest LAN sending a
 * counter request to each every 10 ms. In each round the host that runs both
 * primaries loses power (its cables dead at once, then its daemon and QEMUs
 * killed), then comes back (cables, then its daemon on its old state, no
 * QEMU); measured:
 * - power loss → each VM's first good answer from the survivor, and the time
 *   until every VM of the lost host answered;
 * - the daemon of the returning host started → every VM PROTECTED again.
 * Written to bench/results/host-loss.json.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DaemonVmLab, LAB_GUEST_IPS } from '../src/lab/daemon-vm.js';
import { NetnsClient } from '../src/lab/client-driver.js';
import { summarize, table, writeResult } from './stats.js';

const ROUNDS = Number(process.env.LOCKSTEP_BENCH_HOST_LOSSES ?? 4);
const VMS = ['web', 'db'] as const;
const log = (m: string) => process.stderr.write(`• ${m}\n`);

if (process.getuid?.() !== 0) {
  log('host-loss benchmark skipped: it needs root (network and mount namespaces)');
  process.exit(0);
}

const d = await DaemonVmLab.create('bench-host-loss');
const lostAt: number[] = [];
const reprotected: number[] = [];
const clients: Partial<Record<(typeof VMS)[number], NetnsClient>> = {};
const okTimes: Record<string, number[]> = {};
try {
  log('up -f of web and db through the daemons of the lab hosts, both primaries on a');
  d.addVm('db', ['a', 'b']);
  await d.up();
  await d.up({ vm: 'db' });
  for (const vm of VMS) clients[vm] = NetnsClient.start(d.hosts.ns.client, LAB_GUEST_IPS[vm]!, 10);
  for (const vm of VMS) await clients[vm]!.until((x) => x.httpOk >= 50, 240_000, `${vm}: traffic through COLO`);
  for (let i = 1; i <= ROUNDS; i++) {
    const primary = (await d.writer('web'))!;
    const okBefore = VMS.map((vm) => clients[vm]!.latest.httpOk);
    lostAt.push(Date.now());
    await d.lab.powerLoss(d.hosts, primary);
    await Promise.all(VMS.map((vm, k) => clients[vm]!.until((x) => x.httpOk >= okBefore[k]! + 5, 60_000, `${vm}: answers from the survivor`)));
    await d.hosts.heal();
    const t0 = performance.now();
    await d.lab.startDaemon(primary);
    for (const vm of VMS) await d.untilProtected(`${vm} after host ${primary} came back`, 180_000, vm);
    reprotected.push(performance.now() - t0);
    log(`round ${i}/${ROUNDS}: host ${primary} lost, back: every VM protected again ${(performance.now() - t0).toFixed(0)} ms after its daemon started`);
  }
} finally {
  // The first good answer after each loss, from each client's own record of every answer.
  for (const vm of VMS) okTimes[vm] = (await clients[vm]?.finish())?.http.okTimes ?? [];
  await d.end();
  fs.rmSync(d.root, { recursive: true, force: true });
}

const firstAfter = (vm: string, t: number) => okTimes[vm]!.find((x) => x > t);
const perVm = Object.fromEntries(VMS.map((vm) => [vm, lostAt.flatMap((t) => (firstAfter(vm, t) === undefined ? [] : [firstAfter(vm, t)! - t]))]));
const every = lostAt.flatMap((t) => {
  const firsts = VMS.map((vm) => firstAfter(vm, t));
  return firsts.every((x) => x !== undefined) ? [Math.max(...(firsts as number[])) - t] : [];
});

const result = {
  when: new Date().toISOString(),
  rounds: ROUNDS,
  vms: VMS,
  clientIntervalMs: 10,
  powerLossToAnswerMs: Object.fromEntries(VMS.map((vm) => [vm, summarize(perVm[vm]!)])),
  powerLossToEveryVmAnswersMs: summarize(every),
  daemonBackToEveryVmProtectedMs: summarize(reprotected),
};
const file = writeResult('host-loss', result);
const row = (label: string, x: ReturnType<typeof summarize>) => [label, String(x.n), x.median.toFixed(0), x.p99.toFixed(0), x.max.toFixed(0)];
process.stdout.write(
  `\nThe host of both primaries lost (power: cables dead, daemon and QEMUs killed), then back (${lostAt.length} rounds, 2 VMs, daemons + witness, bridge mode)\n` +
    table([
      ['figure', 'n', 'p50 ms', 'p99 ms', 'max ms'],
      ...VMS.map((vm) => row(`power loss → ${vm} answers`, result.powerLossToAnswerMs[vm]!)),
      row('power loss → every VM answers', result.powerLossToEveryVmAnswersMs),
      row('daemon back → every VM protected', result.daemonBackToEveryVmProtectedMs),
    ]) +
    `\nwritten to ${path.relative(process.cwd(), file)}\n`,
);
