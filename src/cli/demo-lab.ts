/**
 * The demo on the lab's separate hosts (run as root): lockstep lab up, a
 * client on the guest LAN with one TCP connection to the guest's echo
 * service and a counter request every 100 ms, kill -9 of the primary QEMU,
 * the secondary's agent taking over while the client carries on, then the
 * agents re-protecting the VM with a new secondary on the node that lost
 * its QEMU. The lab is left running for lockstep lab status / kill / cut /
 * down.
 */
import path from 'node:path';
import { HostsLab } from '../lab/hosts-scenario.js';
import { NetnsClient, counterProblems } from '../lab/client-driver.js';
import { loadConfig } from '../config/load.js';
import { waitForAgentTakeover } from '../pair/failover.js';
import { createProgress } from '../util/progress.js';
import { sleep, waitFor } from '../util/time.js';
import { readState } from '../pair/state.js';

const GUEST = '10.0.2.15';

export interface LabDemoOptions {
  dir: string;
  seconds: number;
  after: number;
  kill: boolean;
}

export async function labDemo(o: LabDemoOptions): Promise<number> {
  const out = (s: string) => process.stdout.write(s + '\n');
  const root = path.resolve(o.dir);
  const progress = createProgress();
  const old = HostsLab.open(root);
  if (old) {
    progress.step(`stopping the previous lab in ${path.relative(process.cwd(), root) || root}`);
    await old.remove();
  }
  const { lab, pair } = await HostsLab.up(root, { onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
  progress.done(`protected in ${((pair.state.upMs ?? 0) / 1000).toFixed(1)} s, the guest answers`);
  const c = loadConfig(lab.currentConfig);
  const primary = pair.state.nodes.find((n) => n.role === 'primary')!;
  const secondary = pair.state.nodes.find((n) => n.role === 'secondary')!;
  out('');
  out(`hosts: ${primary.name} (primary, QEMU pid ${primary.pid}) and ${secondary.name} (secondary, pid ${secondary.pid}), each with its agent;`);
  out(`a witness; a client on the guest LAN (${lab.hosts.addr.client}) talking to the guest at ${GUEST}.`);
  out('The client keeps ONE TCP connection to the guest\'s echo service and asks the guest\'s disk counter every 100 ms.');
  out('');
  const client = NetnsClient.start(lab.hosts.ns.client, GUEST, 100);
  await client.until((t) => t.echoOk > 0 && t.httpOk > 0, 60_000, 'the first answers through COLO');
  const phase = async (label: string, seconds: number) => {
    for (let s = 0; s < seconds; s++) {
      await sleep(1000);
      const t = client.latest;
      out(`${label}  count=${t.lastCount ?? '-'}  echo round trips ${t.echoOk}  requests answered ${t.httpOk}  errors ${t.errors}`);
    }
  };
  await phase(`[${primary.name} primary]`, o.seconds);
  let killedWall: number | undefined;
  if (o.kill) {
    out('');
    out(`kill -9 ${primary.pid}   (the primary QEMU dies)`);
    killedWall = Date.now();
    process.kill(primary.pid, 'SIGKILL');
    const f = await waitForAgentTakeover(c, secondary.name);
    out(`${f.to} took over by itself (${f.reason.replace(/^agent: /, '')}; failover procedure ${f.ms.toFixed(0)} ms)`);
    out('');
    await phase(`[${f.to} survivor]`, o.after);
    // The agents re-protect the VM by themselves: a new secondary on the node that lost its QEMU.
    const r = await waitFor('the agents to re-protect the VM', () => {
      const x = readState(c.stateDir)?.lastResync;
      return x && x.to === primary.name ? x : undefined;
    }, { timeoutMs: 120_000, intervalMs: 200 }).catch(() => undefined);
    out('');
    if (r) {
      out(`${r.from}'s agent re-protected the VM by itself: a new secondary on ${r.to}, its disk mirrored (${(r.mirrorBytes / 2 ** 20).toFixed(0)} MiB in ${(r.mirrorMs / 1000).toFixed(1)} s), ` +
        `back in COLO ${((Date.parse(r.at) - killedWall) / 1000).toFixed(1)} s after the kill (the VM stopped ${r.stoppedMs.toFixed(0)} ms for the switch).`);
      out('');
      await phase(`[${r.from} primary, ${r.to} secondary]`, 3);
    } else out(`WARNING: the pair was not protected again within 2 minutes; see ${c.stateDir}/*/agent.log`);
  }
  const s = await client.finish();
  const problem = counterProblems(s.http.counts);
  out('');
  const first = killedWall === undefined ? undefined : s.http.okTimes.find((t) => t > killedWall!);
  if (first !== undefined) out(`The first answer from the survivor came ${first - killedWall!} ms after the kill.`);
  out(s.echo.closed || s.echo.errors.length
    ? `WARNING: the echo connection broke: ${s.echo.errors.join('; ') || 'closed by the guest'}`
    : `The client's TCP connection stayed open throughout: ${s.echo.ok} echoes, the longest ${s.echo.maxMs.toFixed(0)} ms.`);
  out(problem
    ? `WARNING: the disk counter ${problem}`
    : `The disk counter never went back nor skipped an acknowledged value (${s.http.counts[0]} … ${s.http.counts.at(-1)}).`);
  if (s.http.errors.length) out(`${s.http.errors.length} request(s) failed (at most the one in flight at the kill is expected): ${s.http.errors.slice(0, 3).join('; ')}`);
  out('');
  out('The lab keeps running, the VM protected.');
  out('  look:      node bin/lockstep.js lab status');
  out(`  try:       node bin/lockstep.js lab exec client -- wget -qO- http://${GUEST}/cgi-bin/cnt`);
  out('  stop it:   node bin/lockstep.js lab down');
  return problem || s.echo.closed || s.echo.errors.length ? 1 : 0;
}
