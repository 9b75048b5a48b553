/**
 * lockstep demo: a protected pair of real VMs on this host, a client counting
 * through COLO, then the primary is killed and the secondary takes over while
 * the client keeps counting.
 */
import type { Command } from 'commander';
import { labRuntime } from '../lab/runtime.js';
import { OneHostPair } from '../lab/pair.js';
import { secondaryFailover } from '../colo/failover.js';
import { createProgress } from '../util/progress.js';
import { sleep } from '../util/time.js';

async function count(base: string): Promise<{ n?: number; ms: number; error?: string }> {
  const t0 = performance.now();
  try {
    const r = await fetch(`${base}/cgi-bin/cnt`, { signal: AbortSignal.timeout(5000) });
    const m = /count=(\d+)/.exec(await r.text());
    return { n: m ? Number(m[1]) : undefined, ms: performance.now() - t0 };
  } catch (err) {
    return { ms: performance.now() - t0, error: (err as Error).message };
  }
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .summary('a protected pair on this host, a client, a killed primary, a survivor')
    .description(
      'run a COLO-protected pair of demo VMs on this host, count through it with a client,\n' +
        'kill the primary, and watch the secondary take over while the client carries on',
    )
    .option('--seconds <n>', 'how long the client counts before the primary is killed', '15')
    .option('--after <n>', 'how long the client counts on the survivor', '10')
    .option('--tcg', 'use the lab QEMU under TCG even where KVM works')
    .action(async (opts: { seconds: string; after: string; tcg?: boolean }) => {
      const out = (s: string) => process.stdout.write(s + '\n');
      const progress = createProgress();
      const rt = await labRuntime({ forceTcg: opts.tcg, onProgress: (m) => progress.step(m), onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      progress.step(`starting a protected pair (${rt.accel.toUpperCase()})`);
      const t0 = Date.now();
      const pair = await OneHostPair.start({ qemu: { accel: rt.accel === 'tcg' && opts.tcg ? 'tcg' : 'auto' }, checkpointDelayMs: 2000, waitGuest: false });
      progress.step(`COLO running after ${((Date.now() - t0) / 1000).toFixed(1)} s; waiting for the guest's services`);
      try {
        const { waitForSerial } = await import('../qemu/serial.js');
        await waitForSerial(pair.primary.serialLog, rt.guest.readyMarker, 120_000);
        progress.done(`protected pair ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        out('');
        out(`primary   pid ${pair.primary.proc.pid}   secondary pid ${pair.secondary.proc.pid}   logs in ${pair.dir}`);
        out(`the guest's counter: curl ${pair.httpBase}/cgi-bin/cnt`);
        out('');
        let highest = 0;
        let wentBack = 0;
        let errors = 0;
        const check = (r: { n?: number; error?: string }) => {
          if (r.error || r.n === undefined) errors++;
          else {
            if (r.n <= highest) wentBack++;
            highest = Math.max(highest, r.n);
          }
        };
        const phase = async (label: string, seconds: number) => {
          const end = Date.now() + seconds * 1000;
          let last = Date.now();
          while (Date.now() < end) {
            const r = await count(pair.httpBase);
            check(r);
            if (Date.now() - last >= 1000 || r.error) {
              last = Date.now();
              out(
                `${label}  ${r.error ? `ERROR ${r.error}` : `count=${r.n}`}  ${r.ms.toFixed(0).padStart(5)} ms   checkpoints so far: ${pair.checkpoints()}`,
              );
            }
            await sleep(100);
          }
        };
        await phase('[primary ]', Number(opts.seconds));
        out('');
        out(`kill -9 ${pair.primary.proc.pid}   (the primary QEMU dies)`);
        const killedAt = performance.now();
        pair.primary.proc.signal('SIGKILL');
        await pair.primary.proc.wait();
        await secondaryFailover(pair.secondary.qmp, { forwards: pair.forwards });
        const first = await count(pair.httpBase);
        check(first);
        out(
          `secondary took over: first answer ${first.error ? `ERROR ${first.error}` : `count=${first.n}`} ` +
            `${(performance.now() - killedAt).toFixed(0)} ms after the kill`,
        );
        out('');
        await phase('[survivor]', Number(opts.after));
        out('');
        if (wentBack === 0) out(`The counter never went back (highest ${highest}): every acknowledged increment survived the failover.`);
        else out(`WARNING: the counter went back ${wentBack} time(s): acknowledged increments were lost.`);
        if (errors) out(`${errors} request(s) failed.`);
        process.exitCode = wentBack ? 1 : 0;
      } finally {
        await pair.stop({ removeDir: true });
        out('both VMs stopped');
      }
    });
}
