/**
 * lockstep demo. As root, on the lab's separate hosts (demo-lab.ts).
 * Otherwise (or with -c): `up` with the shipped one-host config, a client
 * counting through COLO, then (unless --no-kill) kill -9 of the primary QEMU
 * and the secondary's agent taking over (or `failover` on a config without
 * agents), while the client keeps counting. The VM is left running; the demo
 * prints how to watch and stop it.
 */
import { prepareForConfig } from '../lab/runtime.js';
import path from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { up } from '../pair/up.js';
import { down } from '../pair/down.js';
import { failover, waitForAgentTakeover } from '../pair/failover.js';
import { readState, liveNodes } from '../pair/state.js';
import { QmpClient } from '../qmp/client.js';
import { checkpointNow } from '../colo/startup.js';
import { waitForSerial } from '../qemu/serial.js';
import { GUEST_READY_MARKER } from '../lab/guest.js';
import { createProgress } from '../util/progress.js';
import { packageRoot } from '../util/paths.js';
import { sleep } from '../util/time.js';
import { LockstepError } from '../util/errors.js';
import { labDemo } from './demo-lab.js';

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
    .summary('a protected pair, a client, a killed primary, a survivor')
    .description(
      'As root: bring up the lab of separate hosts (lockstep lab up: hosts a and b with a lockstep daemon each, a ' +
        'management host beside a witness, a client) and protect VM web between a and b with up -f, let a client keep ' +
        "a TCP connection to the guest and count on its disk, then cut the primary's host's power and watch the other " +
        'host carry the VM on while the client carries on; then the host comes back and the daemons protect the VM ' +
        'again by themselves. The lab is left running (lockstep lab status, lab power-off, lab kill, lab cut, lab down).\n\n' +
        'Not as root, or with -c: the same with the pair of a config on this host (default examples/one-host.yaml, ' +
        'user networking); stop it with lockstep down.',
    )
    .option('-c, --config <file>', 'demonstrate this pair on this host instead of the lab (default when not root: examples/one-host.yaml)')
    .option('--dir <dir>', "the lab's directory (as root, without -c)", path.join('.lockstep', 'lab'))
    .option('--seconds <n>', "how long the client counts before the primary's loss", '10')
    .option('--after <n>', 'how long the client counts on the survivor', '8')
    .option('--no-kill', "leave the protected VM running instead of taking the primary (or, as root, its host) down")
    .action(async (opts: { config?: string; dir: string; seconds: string; after: string; kill: boolean }) => {
      if (opts.config === undefined && process.getuid?.() === 0) {
        process.exitCode = await labDemo({ dir: opts.dir, seconds: Number(opts.seconds), after: Number(opts.after), kill: opts.kill });
        return;
      }
      const out = (s: string) => process.stdout.write(s + '\n');
      const c = loadConfig(opts.config ?? path.join(packageRoot(), 'examples', 'one-host.yaml'));
      const rel = path.relative(process.cwd(), c.file) || c.file;
      const fw = c.vm.network.mode === 'user' ? c.vm.network.forwards.find((f) => f.guestPort === 80) : undefined;
      if (!fw) throw new LockstepError(`${c.file}: the demo needs a forward to the guest's port 80`);
      const base = `http://${fw.host}:${fw.port}`;
      const progress = createProgress();
      const prev = readState(c.stateDir);
      if (prev && liveNodes(prev).length) {
        progress.step(`stopping the previous demo pair "${c.name}"`);
        await down(c);
      }
      // The demo's disk is the demo's own: continue from the newest data of the previous run.
      await prepareForConfig(c, { onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      const r = await up(c, { detached: true, adoptNewest: true, onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      progress.step(`protected in ${((r.state.upMs ?? 0) / 1000).toFixed(1)} s; waiting for the guest's services`);
      const primary = r.state.nodes.find((n) => n.role === 'primary')!;
      const secondary = r.state.nodes.find((n) => n.role === 'secondary')!;
      await waitForSerial(primary.serialLog, GUEST_READY_MARKER, 120_000);
      // The second monitor: the agent holds the first.
      const qmp = await QmpClient.connect(primary.qmpSocket2, { timeoutMs: 5000 });
      // A checkpoint now, so the secondary holds the booted guest before the client connects.
      await checkpointNow(qmp, c.replication.checkpointDelayMs);
      progress.done('the guest answers, and the secondary is in step');
      // Count checkpoints from the primary's STOP events.
      let checkpoints = 0;
      qmp.on('event', (e) => {
        if (e.event === 'STOP') checkpoints++;
      });
      out('');
      out(`primary ${primary.name} (pid ${primary.pid}) and secondary ${secondary.name} (pid ${secondary.pid}) run in COLO (${r.state.runtime.accel.toUpperCase()})`);
      out(`the guest's counter: curl ${base}/cgi-bin/cnt`);
      out('');
      let highest = 0;
      let wentBack = 0;
      let errors = 0;
      const check = (x: { n?: number; error?: string }) => {
        if (x.error || x.n === undefined) errors++;
        else {
          if (x.n <= highest) wentBack++;
          highest = Math.max(highest, x.n);
        }
      };
      const phase = async (label: string, seconds: number, showCheckpoints: boolean) => {
        const end = Date.now() + seconds * 1000;
        let last = 0;
        while (Date.now() < end) {
          const x = await count(base);
          check(x);
          if (Date.now() - last >= 1000 || x.error) {
            last = Date.now();
            const cp = showCheckpoints ? `   checkpoints so far: ${checkpoints}` : '';
            out(`${label}  ${x.error ? `ERROR ${x.error}` : `count=${x.n}`}  ${x.ms.toFixed(0).padStart(5)} ms${cp}`);
          }
          await sleep(100);
        }
      };
      await phase(`[${primary.name} primary]`, Number(opts.seconds), true);
      qmp.destroy();
      if (opts.kill) {
        out('');
        out(`kill -9 ${primary.pid}   (the primary QEMU dies)`);
        const killedAt = performance.now();
        process.kill(primary.pid, 'SIGKILL');
        // With agents (the shipped config has them) the secondary takes over by itself; without, we run the failover.
        const f = r.state.agents
          ? await waitForAgentTakeover(c, secondary.name).then((x) => ({ to: x.to, procedure: `secondary failover by its agent: ${x.reason.replace(/^agent: /, '')}`, ms: x.ms }))
          : await failover(c, { reason: 'demo: primary killed' });
        const first = await count(base);
        check(first);
        out(`${f.to} took over (${f.procedure}, ${f.ms.toFixed(0)} ms): first answer ${first.error ? `ERROR ${first.error}` : `count=${first.n}`} ` +
          `${(performance.now() - killedAt).toFixed(0)} ms after the kill`);
        out('');
        await phase(`[${f.to} survivor]`, Number(opts.after), false);
        out('');
        if (wentBack === 0) out(`The counter never went back (highest ${highest}): every acknowledged increment survived the failover.`);
        else out(`WARNING: the counter went back ${wentBack} time(s): acknowledged increments were lost.`);
      }
      if (errors) out(`${errors} request(s) failed.`);
      out('');
      out(`The VM keeps running${opts.kill ? ` on ${secondary.name}, unprotected until a new secondary joins` : ', protected'}.`);
      out(`  watch it:  node bin/lockstep.js status -c ${rel}`);
      out(`  stop it:   node bin/lockstep.js down -c ${rel}`);
      process.exitCode = wentBack ? 1 : 0;
    });
}
