/**
 * The lab's separate hosts (a network namespace per node, witness, client,
 * and a switch): each link reaches what it should, each cut stops exactly its
 * link, healing brings everything back, and nothing is left behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { run } from '../../src/util/exec.js';
import { createLabHosts } from '../../src/lab/hosts.js';

const isRoot = process.getuid?.() === 0;

/** 'up' if the host answers a TCP connection (here: refuses it, nothing listens), 'cut' if nothing comes back within 1 s. */
async function reach(ns: string, host: string): Promise<'up' | 'cut'> {
  const r = await run('ip', ['netns', 'exec', ns, 'bash', '-c', `timeout 1 bash -c 'exec 3<>/dev/tcp/${host}/9' 2>&1`], { allowFailure: true, timeoutMs: 5000 });
  return /refused/i.test(r.stdout + r.stderr) ? 'up' : 'cut';
}

async function netnsList(): Promise<string> {
  return (await run('ip', ['netns', 'list'], { timeoutMs: 5000 })).stdout;
}

test('separate lab hosts: links, cuts, isolation, healing, removal', { skip: !isRoot && 'needs root for network namespaces', timeout: 120_000 }, async () => {
  const h = await createLabHosts();
  try {
    const matrix = async () => ({
      replication: await reach(h.ns.a, h.addr.replication.b),
      heartbeat: await reach(h.ns.a, h.addr.heartbeat.b),
      aWitness: await reach(h.ns.a, h.addr.mgmt.witness),
      bWitness: await reach(h.ns.b, h.addr.mgmt.witness),
    });
    const all = { replication: 'up', heartbeat: 'up', aWitness: 'up', bWitness: 'up' };
    assert.deepEqual(await matrix(), all);
    await h.cut('heartbeat');
    assert.deepEqual(await matrix(), { ...all, heartbeat: 'cut' }, 'only the heartbeat link is cut');
    await h.restore('heartbeat');
    await h.cut('replication');
    assert.deepEqual(await matrix(), { ...all, replication: 'cut' }, 'only the replication link is cut');
    await h.heal();
    await h.isolate('a');
    assert.deepEqual(await matrix(), { replication: 'cut', heartbeat: 'cut', aWitness: 'cut', bWitness: 'up' }, 'a reaches nothing; b still reaches the witness');
    await h.heal();
    assert.deepEqual(await matrix(), all);
  } finally {
    await h.remove();
  }
  for (const n of Object.values(h.ns)) assert.doesNotMatch(await netnsList(), new RegExp(`^${n}\\b`, 'm'), `namespace ${n} removed`);
});
