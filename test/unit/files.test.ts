import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import { writeFileAtomic, type AtomicWriteFs } from '../../src/util/files.js';
import { readPskKey, writePskDir } from '../../src/qemu/tls.js';
import { deriveDataPlaneKey } from '../../src/pair/keys.js';

/** Real file operations, each recorded as "op target" (fds named by what they were opened on). */
function recordingFs(o: { failOn?: string } = {}): { ops: AtomicWriteFs; calls: string[] } {
  const calls: string[] = [];
  const names = new Map<number, string>();
  const call = (what: string) => {
    calls.push(what);
    if (o.failOn && what.startsWith(o.failOn)) throw Object.assign(new Error(`${what}: injected failure`), { code: 'EIO' });
  };
  const ops: AtomicWriteFs = {
    openSync: (f, flags) => {
      call(`open ${path.basename(f)} ${flags}`);
      const fd = fs.openSync(f, flags);
      names.set(fd, path.basename(f));
      return fd;
    },
    writeSync: (fd, data, off, len) => {
      call(`write ${names.get(fd)}`);
      return fs.writeSync(fd, data, off, len);
    },
    fsyncSync: (fd) => {
      call(`fsync ${names.get(fd)}`);
      fs.fsyncSync(fd);
    },
    closeSync: (fd) => {
      calls.push(`close ${names.get(fd)}`); // never fails: the test is about what comes before it
      fs.closeSync(fd);
    },
    renameSync: (a, b) => {
      call(`rename ${path.basename(a)} ${path.basename(b)}`);
      fs.renameSync(a, b);
    },
    rmSync: (f, opts) => {
      calls.push(`rm ${path.basename(f)}`);
      fs.rmSync(f, opts);
    },
  };
  return { ops, calls };
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-files-'));
}

test('durable: the file is fsynced before the rename, and its directory after it', () => {
  const dir = tmpDir();
  try {
    const file = path.join(dir, 'generation.json');
    const { ops, calls } = recordingFs();
    writeFileAtomic(file, '{"a":1}\n', { durable: true, fs: ops });
    const tmp = `generation.json.tmp-${process.pid}`;
    const d = path.basename(dir);
    assert.deepEqual(calls, [`open ${tmp} w`, `write ${tmp}`, `fsync ${tmp}`, `close ${tmp}`, `rename ${tmp} generation.json`, `open ${d} r`, `fsync ${d}`, `close ${d}`]);
    assert.equal(fs.readFileSync(file, 'utf8'), '{"a":1}\n');
    assert.deepEqual(fs.readdirSync(dir), ['generation.json']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('not durable: no fsync at all, still one rename', () => {
  const dir = tmpDir();
  try {
    const { ops, calls } = recordingFs();
    writeFileAtomic(path.join(dir, 'state.json'), 'x', { fs: ops });
    assert.ok(!calls.some((c) => c.startsWith('fsync')));
    assert.equal(calls.filter((c) => c.startsWith('rename')).length, 1);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a failure before the rename removes the temporary file and leaves the old file as it was', () => {
  for (const failOn of ['write', 'fsync', 'rename']) {
    const dir = tmpDir();
    try {
      const file = path.join(dir, 'generation.json');
      fs.writeFileSync(file, 'old\n');
      const { ops, calls } = recordingFs({ failOn });
      assert.throws(() => writeFileAtomic(file, 'new\n', { durable: true, fs: ops }), /injected failure/);
      assert.equal(fs.readFileSync(file, 'utf8'), 'old\n', `${failOn}: the old file is untouched`);
      assert.deepEqual(fs.readdirSync(dir), ['generation.json'], `${failOn}: no temporary file left`);
      assert.ok(calls.includes(`rm generation.json.tmp-${process.pid}`), `${failOn}: removed`);
      assert.ok(!calls.some((c) => c.startsWith('open lockstep-files-')), `${failOn}: no directory fsync without a rename`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('a failing fsync of the directory is reported (the new file is in place, but not known to be durable)', () => {
  const dir = tmpDir();
  try {
    const file = path.join(dir, 'generation.json');
    const { ops } = recordingFs({ failOn: `fsync ${path.basename(dir)}` });
    assert.throws(() => writeFileAtomic(file, 'new\n', { durable: true, fs: ops }), /injected failure/);
    assert.equal(fs.readFileSync(file, 'utf8'), 'new\n');
    assert.deepEqual(fs.readdirSync(dir), ['generation.json']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('with the real file system: written whole, replaced whole', () => {
  const dir = tmpDir();
  try {
    const file = path.join(dir, 'f.json');
    const big = 'x'.repeat(1 << 20) + 'é\n';
    writeFileAtomic(file, big, { durable: true });
    assert.equal(fs.readFileSync(file, 'utf8'), big);
    writeFileAtomic(file, 'small\n', { durable: true });
    assert.equal(fs.readFileSync(file, 'utf8'), 'small\n');
    assert.deepEqual(fs.readdirSync(dir), ['f.json']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('with a mode (a private key): the file never exists with wider permissions, whatever was there before', () => {
  const dir = tmpDir();
  try {
    const file = path.join(dir, 'host.key');
    fs.writeFileSync(file, 'old\n', { mode: 0o644 });
    // A temporary file left by a crashed writer of the same pid, readable by all.
    fs.writeFileSync(`${file}.tmp-${process.pid}`, 'stale\n', { mode: 0o666 });
    writeFileAtomic(file, 'secret\n', { durable: true, mode: 0o600 });
    assert.equal(fs.readFileSync(file, 'utf8'), 'secret\n');
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(fs.readdirSync(dir), ['host.key']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the data plane\'s key files: keys.psk and dh-params.pem private to their owner, the key derived per VM from the agents\' secret', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-psk-'));
  try {
    const tlsDir = path.join(dir, 'tls');
    const key = deriveDataPlaneKey('a secret of the agents, long enough', 'web');
    assert.match(key, /^[0-9a-f]{64}$/);
    assert.notEqual(key, deriveDataPlaneKey('a secret of the agents, long enough', 'db'), 'each VM its own key');
    writePskDir(tlsDir, key);
    assert.equal(fs.statSync(tlsDir).mode & 0o777, 0o700);
    assert.equal(fs.statSync(path.join(tlsDir, 'keys.psk')).mode & 0o777, 0o600);
    assert.equal(fs.readFileSync(path.join(tlsDir, 'keys.psk'), 'utf8'), `lockstep:${key}\n`);
    assert.equal(readPskKey(tlsDir), key);
    const pem = fs.readFileSync(path.join(tlsDir, 'dh-params.pem'), 'utf8');
    // The PEM decodes to PKCS #3: SEQUENCE { INTEGER prime (2048 bits), INTEGER 2 }.
    const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    assert.equal(der[0], 0x30);
    const prime = crypto.getDiffieHellman('modp14').getPrime();
    assert.ok(der.includes(prime) && der.subarray(-3).equals(Buffer.from([0x02, 0x01, 0x02])));
    assert.throws(() => writePskDir(tlsDir, 'not hex'), /32 bytes/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('COLO buffers: in a directory of their own, made 0700 and exclusively, each file created anew (0600, never through a link); a directory another user planted is refused and left alone', async (t) => {
  const { createBuffers, removeBuffers } = await import('../../src/pair/buffers.js');
  const shm = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-shm-'));
  fs.chmodSync(shm, 0o1777); // world-writable and sticky, as /dev/shm
  t.after(() => fs.rmSync(shm, { recursive: true, force: true }));
  const made: string[] = [];
  const create = async (f: string) => {
    made.push(f);
    fs.appendFileSync(f, 'QFI'); // what qemu-img writes: into the file created for it
  };
  const b = (name: string) => ({ active: path.join(shm, name, 'active.qcow2'), hidden: path.join(shm, name, 'hidden.qcow2') });
  await createBuffers(b('lockstep-web-b'), 2 ** 20, { create });
  assert.equal(fs.statSync(path.join(shm, 'lockstep-web-b')).mode & 0o7777, 0o700);
  for (const f of Object.values(b('lockstep-web-b'))) assert.equal(fs.statSync(f).mode & 0o777, 0o600, f);
  assert.equal(made.length, 2);
  // Again (a new secondary): ours, replaced.
  await createBuffers(b('lockstep-web-b'), 2 ** 20, { create });
  assert.equal(fs.readFileSync(b('lockstep-web-b').active, 'latin1'), 'QFI', 'a fresh file, not appended to');
  removeBuffers(Object.values(b('lockstep-web-b')));
  assert.deepEqual(fs.readdirSync(path.join(shm, 'lockstep-web-b')), [], 'the buffers go; their directory stays ours (its name taken by nobody else)');
  // A symbolic link planted where the directory goes: refused, its target untouched.
  const target = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-target-'));
  t.after(() => fs.rmSync(target, { recursive: true, force: true }));
  fs.writeFileSync(path.join(target, 'active.qcow2'), 'precious');
  fs.symlinkSync(target, path.join(shm, 'lockstep-web-a'));
  await assert.rejects(createBuffers(b('lockstep-web-a'), 2 ** 20, { create }), /lockstep-web-a is a symbolic link, where lockstep keeps files only it may read/);
  assert.equal(fs.readFileSync(path.join(target, 'active.qcow2'), 'utf8'), 'precious');
  assert.ok(fs.lstatSync(path.join(shm, 'lockstep-web-a')).isSymbolicLink(), 'left alone');
  // A directory another user made there (as root here: chown to nobody): refused, left alone.
  if (process.getuid?.() === 0) {
    const theirs = path.join(shm, 'lockstep-db-b');
    fs.mkdirSync(theirs, { mode: 0o777 });
    fs.chownSync(theirs, 65534, 65534);
    fs.writeFileSync(path.join(theirs, 'active.qcow2'), 'planted');
    await assert.rejects(createBuffers(b('lockstep-db-b'), 2 ** 20, { create }), /belongs to user 65534, not to lockstep's user \(0\)/);
    assert.equal(fs.readFileSync(path.join(theirs, 'active.qcow2'), 'utf8'), 'planted', 'not followed, not removed');
  }
  assert.equal(made.length, 4, 'qemu-img was never run on a refused path');
});

test("a pair's state file is written durably (fsync of the file before the rename, of its directory after) and under its lock", async (t) => {
  const { writeState, updateState, readState } = await import('../../src/pair/state.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-state-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const s = { version: 1, name: 'web', configFile: '/x', runtime: {}, endpoints: {}, forwards: [], buffers: { active: 'a', hidden: 'h' }, nodes: [], startedAt: 'then' } as never;
  const { ops, calls } = recordingFs();
  writeState(dir, s, { fs: ops });
  const tmpName = `state.json.tmp-${process.pid}`;
  assert.deepEqual(calls.filter((c) => !c.startsWith('close') && !c.startsWith('rm')), [`open ${tmpName} w`, `write ${tmpName}`, `fsync ${tmpName}`, `rename ${tmpName} state.json`, `open ${path.basename(dir)} r`, `fsync ${path.basename(dir)}`]);
  assert.equal(fs.existsSync(path.join(dir, 'state.json.lock')), false, 'the lock is given back');
  // Another process holds the lock: a write waits for it (here: it is held past the bound, and the error names it).
  const holder = spawn('sleep', ['30']);
  t.after(() => holder.kill());
  fs.writeFileSync(path.join(dir, 'state.json.lock'), `${holder.pid}\n`);
  const t0 = performance.now();
  assert.throws(() => updateState(dir, (x) => x), new RegExp(`state\\.json\\.lock has been held by process ${holder.pid} for over 5000 ms`));
  assert.ok(performance.now() - t0 >= 5000);
  // Its holder died holding it: taken over.
  holder.kill();
  await new Promise((r) => holder.once('exit', r));
  assert.equal(updateState(dir, (x) => ({ ...x, stoppedAt: 'now' }))?.stoppedAt, 'now');
  assert.equal(readState(dir)?.stoppedAt, 'now');
  assert.equal(fs.existsSync(path.join(dir, 'state.json.lock')), false);
});

test('a log budget: at most N lines a window, the rest counted and said with the next line logged', async () => {
  const { LogBudget, budgeted } = await import('../../src/util/log-budget.js');
  let now = 0;
  const lines: string[] = [];
  const log = budgeted(new LogBudget({ perWindow: 3, windowMs: 1000, now: () => now }), (l) => lines.push(l));
  for (let i = 0; i < 1000; i++) log(`refused ${i}`);
  assert.deepEqual(lines, ['refused 0', 'refused 1', 'refused 2']);
  now = 1000;
  log('refused again');
  assert.deepEqual(lines.at(-1), 'refused again (997 more like it not logged)');
  assert.throws(() => new LogBudget({ perWindow: 0, windowMs: 1, now: () => 0 }), RangeError);
});
