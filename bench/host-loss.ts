/**
 * Host-loss figures (npm run bench; needs root for the lab's namespaces): VM
 * "web" on the daemons of two lab hosts that share nothing, a client on the
 * guest LAN sending a counter request every 10 ms. In each round the
 * primary's host loses power (its cables dead at once, then its daemon and
 * QEMUs killed), then comes back (cables, then its daemon on its old state,
 * no QEMU); measured:
 * - power loss → the client's first good answer from the survivor;
 * - the daemon of the returning host started → status PROTECTED again.
 * Written to bench/results/host-loss.json.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DaemonVmLab } from '../src/lab/daemon-vm.js';
import { NetnsClient } from '../src/lab/client-driver.js';
import { summarize, table, writeResult } from './stats.js';

const ROUNDS = Number(process.env.LOCKSTEP_BENCH_HOST_LOSSES ?? 4);
const log = (m: string) => process.stderr.write(`• ${m}\n`);

if (process.getuid?.() !== 0) {
  log('host-loss benchmark skipped: it needs root (network and mount namespaces)');
  process.exit(0);
}

const d = await DaemonVmLab.create('bench-host-loss');
const lostAt: number[] = [];
const reprotected: number[] = [];
let client: NetnsClient | undefined;
let okTimes: number[] = [];
try {
  log('up -f through the daemons of the lab hosts');
  await d.up();
  client = NetnsClient.start(d.hosts.ns.client, '10.0.2.15', 10);
  await client.until((x) => x.httpOk >= 50, 240_000, 'traffic through COLO');
  for (let i = 1; i <= ROUNDS; i++) {
    const st = await d.status();
    const primary = st.of('a')?.agent?.role === 'primary' ? 'a' : 'b';
    const okBefore = client.latest.httpOk;
    lostAt.push(Date.now());
    await d.lab.powerLoss(d.hosts, primary);
    await client.until((x) => x.httpOk >= okBefore + 5, 60_000, 'answers from the survivor');
    await d.hosts.heal();
    await d.lab.startDaemon(primary);
    const back = await d.untilProtected(`after host ${primary} came back`, 180_000);
    reprotected.push(back.ms);
    log(`round ${i}/${ROUNDS}: host ${primary} lost, back: protected again ${back.ms.toFixed(0)} ms after its daemon started`);
  }
} finally {
  // The first good answer after each loss, from the client's own record of every answer.
  okTimes = (await client?.finish())?.http.okTimes ?? [];
  await d.end();
  fs.rmSync(d.root, { recursive: true, force: true });
}

const answered = lostAt.flatMap((t) => {
  const first = okTimes.find((x) => x > t);
  return first === undefined ? [] : [first - t];
});

const result = {
  when: new Date().toISOString(),
  rounds: ROUNDS,
  clientIntervalMs: 10,
  powerLossToAnswerMs: summarize(answered),
  daemonBackToProtectedMs: summarize(reprotected),
};
const file = writeResult('host-loss', result);
const a = result.powerLossToAnswerMs;
const p = result.daemonBackToProtectedMs;
process.stdout.write(
  `\nThe primary's host lost (power: cables dead, daemon and QEMUs killed), then back (${answered.length} rounds, daemons + witness, bridge mode)\n` +
    table([
      ['figure', 'n', 'p50 ms', 'p99 ms', 'max ms'],
      ['power loss → the survivor answers', String(a.n), a.median.toFixed(0), a.p99.toFixed(0), a.max.toFixed(0)],
      ['daemon back → protected again', String(p.n), p.median.toFixed(0), p.p99.toFixed(0), p.max.toFixed(0)],
    ]) +
    `\nwritten to ${path.relative(process.cwd(), file)}\n`,
);
