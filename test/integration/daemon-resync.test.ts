/**
 * Re-protection by hand through the daemons: a VM whose agents do not
 * re-protect by themselves (agents.reprotect: false). `up -f` still protects
 * it (the first protection is asked for); after its primary's host is lost
 * and comes back, the VM runs on alone and status says NOT PROTECTED, and
 * why, until `lockstep resync web` from the management host; a second resync
 * has nothing to do. A client keeps one TCP connection and counts on the
 * disk throughout.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { NetnsClient } from '../../src/lab/client-driver.js';
import { sleep } from '../../src/util/time.js';
import { daemonLab, assertConnectionKept } from '../helpers/daemons.js';

const isRoot = process.getuid?.() === 0;
const resyncAnswer = z.object({ name: z.string(), from: z.string(), to: z.string(), ms: z.number(), alreadyProtected: z.boolean() });

test('re-protection off: alone after a host loss until lockstep resync NAME, then protected', { skip: !isRoot && 'needs root for namespaces', timeout: 10 * 60_000 }, async (t) => {
  const d = await daemonLab(t, 'resync', { reprotect: false });
  const { hosts, lab } = d;
  await d.up();
  const first = await d.status();
  assert.equal(first.code, 0, 'protected by up -f although the agents do not re-protect by themselves');
  const client = NetnsClient.start(hosts.ns.client, '10.0.2.15', 100);
  try {
    await client.until((x) => x.echoOk >= 15 && x.httpOk >= 15, 240_000, 'traffic through COLO');
    const p = (await d.writer())!;
    const s = p === 'a' ? 'b' : 'a';
    const ok = client.latest.httpOk;
    await lab.powerLoss(hosts, p);
    await client.until((x) => x.httpOk >= ok + 5, 60_000, `answers after host ${p} lost power`);
    await hosts.heal();
    await lab.startDaemon(p);
    // Long enough for the agents to have resynced by themselves, had they been allowed to (they take 2-5 s).
    await sleep(10_000);
    const alone = await d.status();
    assert.equal(alone.code, 3, 'status exits 3: not protected');
    assert.equal(alone.of(s)?.agent?.role, 'alone');
    assert.match(alone.of(s)?.agent?.waiting ?? '', /re-protection is off: lockstep resync NAME/, 'status says why, and what to do');

    const r = await lab.cli('mgmt', ['resync', 'web', '--json'], { timeoutMs: 300_000 });
    assert.equal(r.code, 0, r.stderr);
    const done = resyncAnswer.parse(JSON.parse(r.stdout));
    assert.deepEqual([done.from, done.to, done.alreadyProtected], [s, p, false]);
    const after = await d.status();
    assert.equal(after.code, 0, 'protected again');
    assert.deepEqual([after.of(s)?.agent?.role, after.of(p)?.agent?.role], ['primary', 'secondary']);

    const again = await lab.cli('mgmt', ['resync', 'web', '--json']);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(resyncAnswer.parse(JSON.parse(again.stdout)).alreadyProtected, true, 'nothing to do');
    const ok2 = client.latest.httpOk;
    await client.until((x) => x.httpOk >= ok2 + 5, 60_000, 'answers at the end');
  } finally {
    assertConnectionKept(await client.finish());
  }
});
