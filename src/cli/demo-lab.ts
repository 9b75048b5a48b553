/**
 * The demo on the lab's separate hosts, through their daemons (run as root):
 * lockstep lab up (hosts a and b with a daemon each, a management host, a
 * witness, VM "web" brought up with `lockstep up -f`), a client on the guest
 * LAN with one TCP connection to the guest's echo service and a counter
 * request every 100 ms; then the primary's host loses power, the other
 * host's daemon carries the VM on while the client carries on, the host
 * comes back and the daemons protect the VM again by themselves. The lab is
 * left running for lockstep lab status / power-off / kill / cut / down.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DaemonVmLab } from '../lab/daemon-vm.js';
import { NetnsClient, counterGaps, interruption, roundInterruption } from '../lab/client-driver.js';
import { createProgress } from '../util/progress.js';
import { sleep, waitFor } from '../util/time.js';
import { LAB_GUEST, labUp } from './lab-hosts.js';

/** A wall-clock time as the demo prints it: 07:35:31.894 (UTC). */
function clock(t: number): string {
  return new Date(t).toISOString().slice(11, 23);
}

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
  const old = await DaemonVmLab.open(root);
  if (old) {
    progress.step(`stopping the previous lab in ${path.relative(process.cwd(), root) || root}`);
    await old.end();
  }
  const t0 = performance.now();
  const d = await labUp(root, { onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
  progress.done(`VM "${d.vm}" protected, ${((performance.now() - t0) / 1000).toFixed(1)} s after the start (hosts, keys, daemons and the first disk sync included)`);
  const st = await d.status();
  const primary = (await d.writer()) ?? 'a';
  const secondary = primary === 'a' ? 'b' : 'a';
  out('');
  out(`hosts a and b each run a lockstep daemon and share nothing: ${primary} runs the VM (QEMU pid ${st.of(primary)?.agent?.qemuPid}), ${secondary} its secondary (pid ${st.of(secondary)?.agent?.qemuPid}).`);
  out(`The VM file lives on the management host, beside the witness; a client on the guest LAN (${d.hosts.addr.client}) talks to the guest at ${LAB_GUEST}.`);
  out("The client keeps ONE TCP connection to the guest's echo service and asks the guest's disk counter every 100 ms.");
  out('');
  const client = NetnsClient.start(d.hosts.ns.client, LAB_GUEST, 100);
  let failed = false;
  let lostAt: number | undefined;
  /** When the lost host's daemon started again: the power loss's part of the run ends there, the re-protection's begins. */
  let backAt: number | undefined;
  try {
    await client.until((t) => t.echoOk > 0 && t.httpOk > 0, 60_000, 'the first answers through COLO');
    const phase = async (label: string, seconds: number) => {
      for (let s = 0; s < seconds; s++) {
        await sleep(1000);
        const t = client.latest;
        out(`${label}  count=${t.lastCount ?? '-'}  echo round trips ${t.echoOk}  requests answered ${t.httpOk}  errors ${t.errors}`);
      }
    };
    await phase(`[${primary} primary]`, o.seconds);
    if (o.kill) {
      out('');
      out(`host ${primary} loses power: its cables dead, its daemon and QEMU killed   (lockstep lab power-off ${primary})`);
      // The power loss's moment: its last cable dead (a request sent after it cannot reach the host).
      lostAt = (await d.lab.powerLoss(d.hosts, primary)).deadAt;
      // An answer to a request sent after the power loss: one already on its way says nothing of the survivor.
      await client.until((t) => (t.lastAnswerSentAt ?? 0) >= lostAt!, 60_000, 'answers from the survivor');
      const survivor = await waitFor('the survivor to report the takeover', async () => ((await d.status()).of(secondary)?.agent?.role === 'alone' ? true : undefined), { timeoutMs: 30_000, intervalMs: 200 }).then(
        () => `${secondary}'s daemon carries the VM on alone`,
        () => `${secondary} answers`,
      );
      out(`${survivor}, and the client has answers again`);
      out('');
      await phase(`[${secondary} survivor]`, o.after);
      out('');
      out(`host ${primary} comes back: cables connected, its daemon started on its old state, no QEMU   (lockstep lab power-on ${primary})`);
      await d.hosts.heal();
      backAt = Date.now();
      await d.lab.startDaemon(primary);
      const back = await d.untilProtected(`after host ${primary} came back`, 180_000).catch((err: Error) => {
        out(`WARNING: ${err.message}`);
        return undefined;
      });
      if (back) {
        out(`protected again ${(back.ms / 1000).toFixed(1)} s after its daemon started: ${secondary} primary, a new secondary on ${primary}, its disk synced over the replication network.`);
        out('');
        await phase(`[${secondary} primary, ${primary} secondary]`, 3);
      } else failed = true;
    }
  } finally {
    const s = await client.finish();
    // The client's own record, kept beside the lab's logs: the figures below are computed from it.
    const endAt = Date.now();
    fs.writeFileSync(path.join(root, 'demo-client.json'), JSON.stringify({ lostAt: lostAt ?? null, backAt: backAt ?? null, endAt, ...s }) + '\n');
    const gaps = counterGaps(s.http.requests);
    out('');
    out("What the client felt, from its own record of every answer:");
    const secs = (ms: number | undefined) => (ms === undefined ? 'never' : `${(ms / 1000).toFixed(2)} s`);
    if (lostAt !== undefined) {
      // The power loss: from the last answer before it until the host came back; then the re-protection, to the end.
      const until = backAt ?? endAt;
      const counter = roundInterruption(s.http.answers, lostAt, until);
      const echo = roundInterruption(s.echo.answers, lostAt, until);
      out(`  the power loss (${clock(lostAt)}): no answer for ${secs(counter.longestGapMs)} (counter) and ${secs(echo.longestGapMs)} (echo) at most;`);
      out(`    the first answer to a request sent after it came ${secs(counter.firstAfterFaultMs)} (counter) and ${secs(echo.firstAfterFaultMs)} (echo) after it`);
      if (backAt !== undefined) {
        const c2 = roundInterruption(s.http.answers, backAt, endAt);
        const e2 = roundInterruption(s.echo.answers, backAt, endAt);
        out(`  the re-protection (${clock(backAt)} on): no answer for ${secs(c2.longestGapMs)} (counter) and ${secs(e2.longestGapMs)} (echo) at most`);
      }
    } else {
      out(`  no answer for ${secs(interruption(s.http.answers).longestGapMs)} (counter) and ${secs(interruption(s.echo.answers).longestGapMs)} (echo) at most`);
    }
    out(
      s.echo.closed || s.echo.errors.length
        ? `WARNING: the echo connection broke: ${s.echo.errors.join('; ') || 'closed by the guest'}`
        : `The client's TCP connection stayed open throughout: ${s.echo.ok} echoes.`,
    );
    out(gaps ? `WARNING: the disk counter: ${gaps}` : `No acknowledged write was lost: the disk counter never went back, and every value skipped is explained by a request that failed (${s.http.counts[0]} … ${s.http.counts.at(-1)}).`);
    if (s.http.errors.length) out(`${s.http.errors.length} request(s) failed (those in flight at the power loss): ${s.http.errors.slice(0, 3).join('; ')}`);
    failed ||= gaps !== undefined || s.echo.closed || s.echo.errors.length > 0;
  }
  out('');
  out('The lab keeps running.');
  out(`  look:      node bin/lockstep.js lab status   (or: lab run mgmt status ${d.vm}; live: lab run mgmt -- status --watch ${d.vm})`);
  out(`  the story: node bin/lockstep.js lab run mgmt events ${d.vm}   (what happened at the power loss, and why, from both hosts' journals)`);
  out(`  try:       node bin/lockstep.js lab exec client -- wget -qO- http://${LAB_GUEST}/cgi-bin/cnt`);
  out('  chaos:     node bin/lockstep.js lab power-off primary | lab kill secondary | lab cut replication');
  out('  stop it:   node bin/lockstep.js lab down');
  return failed ? 1 : 0;
}
