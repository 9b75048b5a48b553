/**
 * Seeing a protected VM live, on one running lab pair (VM web on the daemons
 * of hosts a and b, a client on the LAN keeping one TCP connection and
 * counting on the disk), chained through one host loss:
 * - metrics: scraped from both daemons (the API's local socket, and the plain
 *   port from the management host), passing `promtool check metrics`;
 *   checkpoints rise, protected drops to 0 and comes back to 1, b's failover
 *   counter rises by one with the reason of a lost primary;
 * - the dashboard: `lockstep dashboard --host b` on the management host, a
 *   headless chromium on it: both hosts shown, a's power loss shown within
 *   2 s without a reload, no console error; screenshots before and after;
 * - the journal: b's daemon killed (SIGKILL) and started again in the middle
 *   of the resync that protects the VM again: no record lost, numbers without
 *   a gap, the resync carried to its end; `lockstep events web` tells the
 *   story of the loss in order, set against the client's own times.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { NetnsClient, counterGaps, type ClientSummary } from '../../src/lab/client-driver.js';
import { METRICS_PORT } from '../../src/lab/daemons.js';
import { eventsAnswerSchema, vmStatusSchema, type JournalRecord } from '../../src/daemon/api-types.js';
import { pollUntil } from '../../src/util/time.js';
import { daemonLab } from '../helpers/daemons.js';
import { getOverSocket, metric, promtoolCheckMetrics } from '../helpers/metrics.js';
import { headless, type Headless } from '../helpers/browser.js';

const isRoot = process.getuid?.() === 0;

test('metrics, the dashboard and the journal of a running pair across a host loss, and a daemon restart in the middle of the resync', { skip: !isRoot && 'needs root for namespaces', timeout: 15 * 60_000 }, async (t) => {
  const startedAt = Date.now();
  const d = await daemonLab(t, 'observe');
  const { hosts, lab } = d;
  const sock = (h: 'a' | 'b') => path.join(lab.dirs(h).run, 'api.sock');
  const scrape = async (h: 'a' | 'b') => {
    const r = await getOverSocket(sock(h), '/metrics');
    assert.equal(r.status, 200, `GET /metrics on ${h}: ${r.body.slice(0, 200)}`);
    return r.body;
  };
  const journal = async (h: 'a' | 'b') => eventsAnswerSchema.parse(JSON.parse((await getOverSocket(sock(h), '/v1/events')).body)).records;
  const web = { vm: 'web' };
  const figures: string[] = [];

  await d.up();
  const client = NetnsClient.start(hosts.ns.client, '10.0.2.15', 100);
  let summary: ClientSummary | undefined;
  const finish = async () => (summary ??= await client.finish());
  let browser: Headless | undefined;
  try {
    await client.until((x) => x.echoOk >= 15 && x.httpOk >= 15, 240_000, 'traffic through COLO');

    // ---- metrics of a protected pair ----
    const a0 = await scrape('a');
    const b0 = await scrape('b');
    for (const [h, text] of [['a', a0], ['b', b0]] as const) {
      const lint = promtoolCheckMetrics(text);
      assert.equal(lint.code, 0, `promtool check metrics on ${h}'s scrape: ${lint.out}`);
      assert.equal(metric(text, 'lockstep_vm_protected', web), 1, `${h}: protected`);
      assert.equal(metric(text, 'lockstep_daemon_healthy'), 1, `${h}: healthy`);
      assert.equal(metric(text, 'lockstep_lease_held', web), h === 'a' ? 1 : 0, `${h}: the lease is the primary's`);
      assert.equal(metric(text, 'lockstep_heartbeat_path_up', { ...web, path: '1' }), 1, `${h}: heartbeat path 1 heard`);
    }
    assert.equal(metric(a0, 'lockstep_vm_role', { ...web, role: 'primary' }), 1);
    assert.equal(metric(b0, 'lockstep_vm_role', { ...web, role: 'secondary' }), 1);
    await new Promise((r) => setTimeout(r, 3000));
    const a1 = await scrape('a');
    const cp = (text: string) => metric(text, 'lockstep_checkpoints_total', web) ?? 0;
    assert.ok(cp(a1) > cp(a0), `checkpoints rise on a (${cp(a0)} → ${cp(a1)})`);
    assert.equal(metric(a1, 'lockstep_checkpoint_pause_seconds_count', web), cp(a1), 'one pause per checkpoint');
    const p99 = metric(a1, 'lockstep_checkpoint_pause_seconds_sum', web)! / cp(a1);
    figures.push(`checkpoints on a: ${cp(a0)} → ${cp(a1)} in 3 s; mean pause ${(p99 * 1000).toFixed(1)} ms`);
    // The plain, read-only port, from the management host (which holds a certificate, but a scraper needs none).
    const plain = await lab.exec('mgmt', process.execPath, [
      '-e',
      `(async () => { const u = 'http://${hosts.addr.mgmt.a}:${METRICS_PORT}'; const g = await fetch(u + '/metrics'); const t = await g.text(); const p = await fetch(u + '/metrics', { method: 'POST' }); const o = await fetch(u + '/v1/vms'); console.log(JSON.stringify({ get: g.status, protectedLine: t.split('\\n').find((l) => l.startsWith('lockstep_vm_protected{')), post: p.status, api: o.status })); })()`,
    ]);
    const pl = JSON.parse(plain.stdout) as { get: number; protectedLine: string; post: number; api: number };
    assert.deepEqual(pl, { get: 200, protectedLine: 'lockstep_vm_protected{vm="web"} 1', post: 405, api: 404 }, 'the plain port serves the metrics, read-only, and nothing else');

    // ---- the dashboard, as the operator on the management host opens it ----
    const bridge = await lab.loopbackBridge('mgmt');
    let url = '';
    const dash = lab.spawnCli('mgmt', ['dashboard', '--host', 'b', '--port', String(bridge.port)], (l) => {
      const m = /open (http:\/\/\S+)/.exec(l);
      if (m) url = m[1]!;
    });
    t.after(async () => {
      await browser?.close();
      await dash.stop();
      await bridge.close();
    });
    await pollUntil(() => url, (u) => u !== '', { timeoutMs: 20_000, intervalMs: 100 });
    assert.ok(url, 'lockstep dashboard printed its URL');
    browser = await headless();
    const page = browser.page;
    await page.goto(url);
    const card = page.locator('[data-vm="web"]');
    await card.locator('[data-testid="state"][data-state="protected"]').waitFor({ timeout: 15_000 });
    assert.deepEqual(await card.locator('.part').evaluateAll((els) => els.map((e) => e.getAttribute('data-host'))), ['a', 'b'], 'both hosts of the VM');
    assert.deepEqual(await card.locator('.part [data-testid="role"]').allTextContents(), ['primary', 'secondary']);
    await card.locator('.chart circle').first().waitFor({ timeout: 10_000 });
    await page.screenshot({ path: path.join(d.root, 'dashboard-before.png'), fullPage: true });

    // ---- the primary's host loses power ----
    const before = { b: await scrape('b') };
    const failoversBefore = metric(before.b, 'lockstep_failovers_total', { ...web, kind: 'takeover', reason: 'peer-unreachable' });
    assert.equal(failoversBefore, 0, "b's failover counter exists before any failover (0)");
    const lost = await lab.powerLoss(hosts, 'a');
    await card.locator('[data-testid="state"]:not([data-state="protected"])').waitFor({ timeout: Math.max(1, 2000 - (Date.now() - lost.deadAt)) });
    const shownMs = Date.now() - lost.deadAt;
    await card.locator('.part[data-host="a"][data-reachable="false"]').waitFor({ timeout: Math.max(1, 2000 - (Date.now() - lost.deadAt)) });
    const hostShownMs = Date.now() - lost.deadAt;
    assert.ok(hostShownMs < 2000, `the page shows host a lost ${hostShownMs} ms after its power loss`);
    figures.push(`dashboard: NOT PROTECTED shown ${shownMs} ms after a's power loss, host a not answering ${hostShownMs} ms after it (no reload)`);
    const ok0 = client.latest.httpOk;
    await client.until((x) => x.httpOk >= ok0 + 5, 60_000, 'answers from b');
    const b1 = await scrape('b');
    assert.equal(metric(b1, 'lockstep_vm_protected', web), 0, 'b: not protected, alone');
    assert.equal(metric(b1, 'lockstep_vm_role', { ...web, role: 'alone' }), 1);
    assert.equal(metric(b1, 'lockstep_failovers_total', { ...web, kind: 'takeover', reason: 'peer-unreachable' }), 1, "b's failover counter rose by one: it took the VM over from an unreachable primary");
    assert.equal(metric(b1, 'lockstep_failover_detection_seconds_count', web), 1);
    await card.locator('.part[data-host="b"] [data-testid="role"]', { hasText: 'alone' }).waitFor({ timeout: 10_000 });
    await page.waitForTimeout(500);
    await page.screenshot({ path: path.join(d.root, 'dashboard-after.png'), fullPage: true });
    assert.deepEqual(browser.errors, [], 'no console or page error');
    assert.equal(await page.evaluate(() => (performance as unknown as { getEntriesByType(t: string): unknown[] }).getEntriesByType('navigation').length), 1, 'one page load: never reloaded');
    await browser.close();
    browser = undefined;
    await dash.stop();
    await bridge.close();

    // ---- a comes back; b's daemon is killed in the middle of the resync that follows ----
    await hosts.heal();
    await lab.startDaemon('a');
    const inResync = await pollUntil(
      async () => vmStatusSchema.parse(JSON.parse((await getOverSocket(sock('b'), '/v1/vms/web')).body)).agent,
      (a) => a?.work?.kind === 'reprotect' && a.work.phase === 'resuming',
      { timeoutMs: 120_000, intervalMs: 50 },
    );
    assert.ok(inResync.done, `b begins a resync (${JSON.stringify(inResync.last?.work ?? inResync.last?.waiting)})`);
    const beforeKill = await journal('b');
    await lab.stopDaemon('b', 'SIGKILL');
    const killedAt = Date.now();
    figures.push(`b's daemon killed during the resync (${inResync.last?.work?.step ?? '?'}), ${beforeKill.length} records in its journal`);
    await lab.startDaemon('b');
    const back = await d.untilProtected('after b\'s daemon restart in the middle of the resync', 180_000);
    figures.push(`protected again ${((Date.now() - killedAt) / 1000).toFixed(1)} s after b's daemon was killed`);
    assert.deepEqual([back.s.of('a')?.agent?.role, back.s.of('b')?.agent?.role], ['secondary', 'primary']);

    const afterKill = await journal('b');
    assert.deepEqual(afterKill.slice(0, beforeKill.length), beforeKill, 'every record b wrote before its daemon was killed is still there, as it was');
    assert.deepEqual(afterKill.map((r) => r.seq), afterKill.map((_, i) => i + 1), "b's records are numbered without a gap across the kill");
    const tail = afterKill.slice(beforeKill.length);
    const restartIdx = tail.findIndex((r) => r.kind === 'daemon' && /started/.test(r.reason));
    assert.ok(restartIdx >= 0, "b's journal says its daemon started again");
    assert.ok(tail.slice(restartIdx).some((r) => r.kind === 'resync'), 'the resync was carried to its end after the restart');

    // ---- metrics after: protected again on both, checkpoints rising ----
    const a2 = await scrape('a');
    const b2 = await scrape('b');
    assert.equal(metric(a2, 'lockstep_vm_protected', web), 1, 'a: protected again');
    assert.equal(metric(b2, 'lockstep_vm_protected', web), 1, 'b: protected again');
    const lintB = promtoolCheckMetrics(b2);
    assert.equal(lintB.code, 0, lintB.out);
    await new Promise((r) => setTimeout(r, 3000));
    const b3 = await scrape('b');
    assert.ok(cp(b3) > cp(b2), `checkpoints rise again on b (${cp(b2)} → ${cp(b3)})`);

    // ---- the story of the loss, as lockstep events web tells it from the management host ----
    const ev = await lab.cli('mgmt', ['events', 'web', '--json']);
    assert.equal(ev.code, 0, ev.stderr);
    const story = JSON.parse(ev.stdout) as JournalRecord[];
    const sorted = [...story].sort((x, y) => x.at.localeCompare(y.at) || x.host.localeCompare(y.host) || x.seq - y.seq);
    assert.deepEqual(story, sorted, 'merged across the two hosts in time order');
    const at = (r: JournalRecord | undefined) => (r ? Date.parse(r.at) : NaN);
    const find = (from: number, pred: (r: JournalRecord) => boolean) => {
      const i = story.findIndex((r, k) => k >= from && pred(r));
      return { i, r: story[i] };
    };
    const silent = find(0, (r) => r.host === 'b' && r.kind === 'heartbeat' && r.figures.heard === false && at(r) >= lost.deadAt);
    const decided = find(silent.i, (r) => r.host === 'b' && r.kind === 'decision' && r.figures.action === 'takeover');
    const failover = find(decided.i, (r) => r.host === 'b' && r.kind === 'failover');
    const aBack = find(failover.i, (r) => r.host === 'a' && r.kind === 'daemon' && /started/.test(r.reason));
    const reprotect = find(aBack.i, (r) => r.host === 'b' && r.kind === 'decision' && r.figures.action === 'reprotect');
    const bBack = find(reprotect.i, (r) => r.host === 'b' && r.kind === 'daemon' && /started/.test(r.reason));
    const resynced = find(bBack.i, (r) => r.host === 'b' && r.kind === 'resync');
    for (const [what, x] of Object.entries({ silent, decided, failover, aBack, reprotect, bBack, resynced })) assert.ok(x.i >= 0, `the story has ${what}, in order`);
    assert.equal(failover.r!.figures.procedure, 'takeover');
    assert.equal(failover.r!.figures.label, 'peer-unreachable');

    // Against what the client felt (its own record, the same clock as the lab's hosts).
    const sum = await finish();
    const answers = sum.http.answers;
    const lastBefore = answers.filter(([, ans]) => ans <= lost.deadAt).at(-1);
    const firstAfter = answers.find(([sent]) => sent >= lost.deadAt);
    assert.ok(lastBefore && firstAfter, 'the client was answered before the loss and after it');
    assert.ok(at(decided.r) >= lost.deadAt, 'b decided after the loss');
    assert.ok(firstAfter[1] >= at(decided.r), "the client's first answer after the loss came after b's decision to take over");
    assert.ok(at(failover.r) <= firstAfter[1] + 1000, "b recorded its failover by the time the client was answered again (within 1 s)");
    const iso = (ms: number) => new Date(ms).toISOString();
    figures.push(
      'the loss, as the journal and the client tell it:',
      `  ${iso(lastBefore[1])}  client: last answer before the loss`,
      `  ${iso(lost.deadAt)}  host a's cables dead (power loss)`,
      ...[silent, decided, failover].map((x) => `  ${x.r!.at}  ${x.r!.host}: ${x.r!.kind}: ${x.r!.reason}`),
      `  ${iso(firstAfter[1])}  client: first answer to a request sent after the loss (${((firstAfter[1] - lost.deadAt) / 1000).toFixed(2)} s after it)`,
      ...[aBack, reprotect, bBack, resynced].map((x) => `  ${x.r!.at}  ${x.r!.host}: ${x.r!.kind}: ${x.r!.reason}`),
    );
    const text = await lab.cli('mgmt', ['events', 'web', '--since', iso(lost.deadAt - 2000)]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /failover +took the VM over from a: no heartbeat, and the primary's host answers nothing \(gone or cut off\): the primary is unreachable/);
    process.stderr.write(`# lockstep events web --since (${story.length} records of web in all since the lab started ${((Date.now() - startedAt) / 1000).toFixed(0)} s ago):\n${text.stdout.split('\n').slice(0, 80).map((l) => `#   ${l}`).join('\n')}\n`);
    assert.equal(sum.echo.closed, false, 'the TCP connection stayed open');
    assert.equal(counterGaps(sum.http.requests), undefined, 'no acknowledged write lost');
  } finally {
    process.stderr.write(figures.map((f) => `# ${f}\n`).join(''));
    await browser?.close();
    await finish();
  }
});
