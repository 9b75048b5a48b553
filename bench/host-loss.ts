/**
 * Host-loss figures (npm run bench; needs root for the lab's namespaces): two
 * VMs, web and db, on the daemons of two lab hosts that share nothing, both
 * with their primary on the same host, a client on the guest LAN sending a
 * counter request to each every 10 ms. In each round the host that runs both
 * primaries loses power (its cables dead at once, then its daemon and QEMUs
 * killed), then comes back (cables, then its daemon on its old state, no
 * QEMU); measured:
 * - what each VM's client felt: its longest time without an answer in the
 *   round (the interruption), and the time from the power loss (its last cable
 *   dead) to the first answer to a request sent after it (only the survivor
 *   can answer that one), and until every VM of the lost host answered so;
 * - the daemon of the returning host started → every VM PROTECTED again.
 * Written to bench/results/host-loss.json.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DaemonVmLab, LAB_GUEST_IPS } from '../src/lab/daemon-vm.js';
import { NetnsClient, roundInterruption } from '../src/lab/client-driver.js';
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
const roundEnd: number[] = [];
const reprotected: number[] = [];
const clients: Partial<Record<(typeof VMS)[number], NetnsClient>> = {};
const answers: Record<string, Array<[number, number]>> = {};
try {
  log('up -f of web and db through the daemons of the lab hosts, both primaries on a');
  d.addVm('db', ['a', 'b']);
  await d.up();
  await d.up({ vm: 'db' });
  for (const vm of VMS) clients[vm] = NetnsClient.start(d.hosts.ns.client, LAB_GUEST_IPS[vm]!, 10);
  for (const vm of VMS) await clients[vm]!.until((x) => x.httpOk >= 50, 240_000, `${vm}: traffic through COLO`);
  for (let i = 1; i <= ROUNDS; i++) {
    const primary = (await d.writer('web'))!;
    const { deadAt } = await d.lab.powerLoss(d.hosts, primary);
    lostAt.push(deadAt);
    await Promise.all(VMS.map((vm) => clients[vm]!.until((x) => (x.lastAnswerSentAt ?? 0) >= deadAt, 60_000, `${vm}: answers from the survivor`)));
    await d.hosts.heal();
    const t0 = performance.now();
    await d.lab.startDaemon(primary);
    for (const vm of VMS) await d.untilProtected(`${vm} after host ${primary} came back`, 180_000, vm);
    reprotected.push(performance.now() - t0);
    roundEnd.push(Date.now());
    log(`round ${i}/${ROUNDS}: host ${primary} lost, back: every VM protected again ${(performance.now() - t0).toFixed(0)} ms after its daemon started`);
  }
} finally {
  // Each client's own record of every answer: what it felt of each loss is computed from it.
  for (const vm of VMS) answers[vm] = (await clients[vm]?.finish())?.http.answers ?? [];
  await d.end();
  fs.rmSync(d.root, { recursive: true, force: true });
}

const rounds = lostAt.slice(0, roundEnd.length).map((t, i) => Object.fromEntries(VMS.map((vm) => [vm, roundInterruption(answers[vm]!, t, roundEnd[i]!)])));
const perVm = (vm: string, f: 'longestGapMs' | 'firstAfterFaultMs') => rounds.flatMap((r) => (r[vm]![f] === undefined ? [] : [r[vm]![f]!]));
const every = rounds.flatMap((r) => {
  const firsts = VMS.map((vm) => r[vm]!.firstAfterFaultMs);
  return firsts.every((x) => x !== undefined) ? [Math.max(...(firsts as number[]))] : [];
});

const result = {
  when: new Date().toISOString(),
  rounds: ROUNDS,
  vms: VMS,
  clientIntervalMs: 10,
  longestInterruptionMs: Object.fromEntries(VMS.map((vm) => [vm, summarize(perVm(vm, 'longestGapMs'))])),
  powerLossToAnswerMs: Object.fromEntries(VMS.map((vm) => [vm, summarize(perVm(vm, 'firstAfterFaultMs'))])),
  powerLossToEveryVmAnswersMs: summarize(every),
  daemonBackToEveryVmProtectedMs: summarize(reprotected),
};
const file = writeResult('host-loss', result);
const row = (label: string, x: ReturnType<typeof summarize>) => [label, String(x.n), x.median.toFixed(0), x.p99.toFixed(0), x.max.toFixed(0)];
process.stdout.write(
  `\nThe host of both primaries lost (power: cables dead, daemon and QEMUs killed), then back (${lostAt.length} rounds, 2 VMs, daemons + witness, bridge mode)\n` +
    table([
      ['figure', 'n', 'p50 ms', 'p99 ms', 'max ms'],
      ...VMS.map((vm) => row(`${vm}: longest time without an answer`, result.longestInterruptionMs[vm]!)),
      ...VMS.map((vm) => row(`power loss → ${vm} answers a request sent after it`, result.powerLossToAnswerMs[vm]!)),
      row('power loss → every VM answers', result.powerLossToEveryVmAnswersMs),
      row('daemon back → every VM protected', result.daemonBackToEveryVmProtectedMs),
    ]) +
    `\nwritten to ${path.relative(process.cwd(), file)}\n`,
);
