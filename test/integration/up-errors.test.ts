/**
 * Bad input gets a clear error and leaves nothing running: a broken config,
 * a missing image, a port in use, a QEMU that exits at start.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { lockstep } from '../helpers/cli.js';
import { findFreePortRange } from '../../src/util/net.js';
import { labConfigYaml } from '../../src/lab/pair.js';
import { runtime } from '../helpers/lab.js';

let dir: string;
let base: number;

function config(name: string, extra: { disk?: string; qemu?: { binary: string; accel: 'kvm' | 'tcg' } } = {}): string {
  const file = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(file, labConfigYaml({ name, base, qemu: extra.qemu, disk: extra.disk, forwards: [[base + 6, 80]], replication: { bufferDir: path.join(dir, 'shm') } }));
  return file;
}

/** QEMU processes whose command line mentions our test directory. */
function qemusInDir(): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.includes('qemu-system') && cmd.includes(dir)) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-err-'));
  base = await findFreePortRange(['127.0.0.1', '127.0.0.2'], 7);
  await runtime(); // lab ready, so errors below are the ones under test
});

after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a broken config: the error names the file and the field, nothing starts', async () => {
  const file = path.join(dir, 'broken.yaml');
  fs.writeFileSync(file, 'vm:\n  memory: lots\n  disk: { image: x.qcow2 }\nnodes:\n  - { name: a, address: 127.0.0.1 }\n  - { name: b, address: 127.0.0.2 }\n');
  const r = await lockstep(['up', '-c', file]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`${file}: vm\\.memory: expected a memory size from 16M to 1T like 512M or 2G, got "lots"`));
  assert.deepEqual(qemusInDir(), []);
});

test('a missing image: says which, and how to start with an empty one', async () => {
  const r = await lockstep(['up', '-c', config('missing', { disk: '{ image: nope.qcow2 }' })]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /nope\.qcow2 \(vm\.disk\.image\) does not exist/);
  assert.match(r.stderr, /vm\.disk\.create: true/);
  assert.deepEqual(qemusInDir(), []);
  assert.equal(fs.existsSync(path.join(dir, 'nope.qcow2')), false, 'nothing created without being asked');
});

test('a port in use: names the port and the config field', async () => {
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(base + 4, '127.0.0.2', r));
  try {
    const r = await lockstep(['up', '-c', config('busy')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`port ${base + 4} on 127\\.0\\.0\\.2 \\(ports\\.migration\\) is in use`));
    assert.deepEqual(qemusInDir(), []);
  } finally {
    blocker.close();
  }
});

test('a QEMU that exits at start: its own error is shown and the other QEMU is ended', async () => {
  const rt = await runtime();
  // A QEMU that works for probing but whose secondary (the one with -incoming) dies at start.
  const wrapper = path.join(dir, 'qemu-wrapper.sh');
  fs.writeFileSync(wrapper, `#!/bin/sh\ncase "$*" in *-incoming*) exec ${rt.binary} "$@" -no-such-option ;; esac\nexec ${rt.binary} "$@"\n`);
  fs.chmodSync(wrapper, 0o755);
  const r = await lockstep(['up', '-c', config('dies', { qemu: { binary: wrapper, accel: rt.accel } })]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /QEMU secondary b exited/);
  assert.match(r.stderr, /no-such-option/);
  assert.match(r.stderr, /qemu\.log/, 'points at the full log');
  assert.deepEqual(qemusInDir(), [], 'the primary that had started is gone too');
});
