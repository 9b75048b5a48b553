/**
 * Re-protection figures (npm run bench; needs root for the lab's network
 * namespaces): a pair on the lab's separate hosts whose disk holds real
 * (random, incompressible) data, a client sending a counter request every
 * 100 ms; the secondary QEMU is killed repeatedly and the agents re-protect
 * the VM by themselves. Measured:
 * - kill → protected again (the whole unprotected window);
 * - the resync's disk mirror throughput (bytes / time to BLOCK_JOB_READY);
 * - how long the VM was stopped for the switch into COLO;
 * next to a local `qemu-img convert` of the same image in the same run, as
 * the yardstick for the mirror (ratio). Written to bench/results/resync.json.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HostsLab } from '../src/lab/hosts-scenario.js';
import { createDataDisk } from '../src/lab/data-disk.js';
import { run } from '../src/util/exec.js';
import { qemuImg as findQemuImg } from '../src/qemu/images.js';
import { waitFor } from '../src/util/time.js';
import { readState } from '../src/pair/state.js';
import { summarize, table, writeResult } from './stats.js';

const KILLS = Number(process.env.LOCKSTEP_BENCH_RESYNCS ?? 5);
const DISK_MIB = Number(process.env.LOCKSTEP_BENCH_DISK_MIB ?? 256);
const log = (m: string) => process.stderr.write(`• ${m}\n`);

if (process.getuid?.() !== 0) {
  log('resync benchmark skipped: it needs root (network namespaces)');
  process.exit(0);
}
const qemuImg = findQemuImg();

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-bench-resync-'));
const image = path.join(root, 'data.qcow2');
log(`making a ${DISK_MIB} MiB disk image full of random data`);
await createDataDisk(image, DISK_MIB);

const lab = await HostsLab.create(root);
const reprotectMs: number[] = [];
const mirrorMiBps: number[] = [];
const stoppedMs: number[] = [];
const resyncMs: number[] = [];
const convertMiBps: number[] = [];
try {
  const p = await lab.startPair({ diskImage: image });
  try {
    for (let i = 1; i <= KILLS; i++) {
      const st = await p.status();
      const victim = st.nodes.find((n) => n.role === 'secondary')!;
      const killedAt = Date.now();
      process.kill(victim.pid!, 'SIGKILL');
      const after = await waitFor('protected again', async () => {
        const s = await p.status();
        return s.protected && s.lastResync && s.lastResync.at !== st.lastResync?.at ? s : undefined;
      }, { timeoutMs: 180_000, intervalMs: 50 });
      const r = after.lastResync!;
      reprotectMs.push(Date.parse(after.protectedAt!) - killedAt);
      mirrorMiBps.push(r.mirrorBytes / 2 ** 20 / (r.mirrorMs / 1000));
      stoppedMs.push(r.stoppedMs);
      resyncMs.push(r.ms);
      // The yardstick, in the same run: a local copy of the same disk (the survivor's, read while in use).
      const survivorDisk = readState(p.stateDir)!.nodes.find((n) => n.role === 'primary')!.disk;
      const copy = path.join(root, 'copy.qcow2');
      const t0 = performance.now();
      await run(qemuImg, ['convert', '-U', '-O', 'qcow2', survivorDisk, copy], { timeoutMs: 300_000 });
      convertMiBps.push(DISK_MIB / ((performance.now() - t0) / 1000));
      fs.rmSync(copy, { force: true });
      log(`resync ${i}/${KILLS}: protected again ${reprotectMs.at(-1)} ms after the kill; mirror ${(r.mirrorBytes / 2 ** 20).toFixed(0)} MiB in ${r.mirrorMs.toFixed(0)} ms; VM stopped ${r.stoppedMs.toFixed(0)} ms; qemu-img convert ${convertMiBps.at(-1)!.toFixed(0)} MiB/s`);
    }
  } finally {
    const s = await p.stop();
    log(`client: ${s.http.ok} answers, ${s.http.errors.length} errors, echo ${s.echo.ok}/${s.echo.sent}, longest answer ${s.http.maxMs.toFixed(0)} ms`);
  }
} finally {
  await lab.remove();
  fs.rmSync(root, { recursive: true, force: true });
}

const mirror = summarize(mirrorMiBps);
const convert = summarize(convertMiBps);
const result = {
  when: new Date().toISOString(),
  resyncs: reprotectMs.length,
  diskMiB: DISK_MIB,
  killToProtectedMs: summarize(reprotectMs),
  resyncMs: summarize(resyncMs),
  vmStoppedMs: summarize(stoppedMs),
  mirrorMiBps: mirror,
  localConvertMiBps: convert,
  mirrorToConvertRatio: Math.round((mirror.median / convert.median) * 100) / 100,
};
const file = writeResult('resync', result);
const row = (name: string, x: { n: number; median: number; p99: number; max: number }, unit: string) => [name, String(x.n), `${x.median.toFixed(0)} ${unit}`, `${x.p99.toFixed(0)} ${unit}`, `${x.max.toFixed(0)} ${unit}`];
process.stdout.write(
  `\nRe-protection after a killed secondary (${reprotectMs.length} resyncs of a ${DISK_MIB} MiB disk of random data, agents, separate lab hosts)\n` +
    table([
      ['figure', 'n', 'p50', 'p99', 'max'],
      row('kill → protected again', result.killToProtectedMs, 'ms'),
      row('resync (start → protected)', result.resyncMs, 'ms'),
      row('VM stopped for the switch', result.vmStoppedMs, 'ms'),
      row('disk mirror throughput', mirror, 'MiB/s'),
      row('local qemu-img convert', convert, 'MiB/s'),
    ]) +
    `\nmirror / local convert: ${result.mirrorToConvertRatio}\nwritten to ${path.relative(process.cwd(), file)}\n`,
);
