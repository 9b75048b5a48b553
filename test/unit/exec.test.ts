/** Commands lockstep runs (src/util/exec.ts): never left behind, and as nice as lockstep itself. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { pidAlive } from '../../src/util/proc.js';

const execModule = new URL('../../src/util/exec.js', import.meta.url).href;

/** Runs `script` (an ES module body with `run` imported) in a child node, under `prefix` (e.g. nice). */
function node(script: string, prefix: string[] = []): ReturnType<typeof spawn> {
  const code = `import { run } from ${JSON.stringify(execModule)};\n${script}`;
  const argv = [...prefix, process.execPath, '--input-type=module', '-e', code];
  return spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
}

async function output(child: ReturnType<typeof spawn>): Promise<string> {
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise((r) => child.on('close', r));
  return out;
}

test('a command lockstep runs ends with lockstep: SIGTERM to lockstep ends its whole group', async () => {
  const child = node(`const r = run('sh', ['-c', 'sleep 300 & echo $!; wait'], { onLine: (l) => process.stdout.write(l + '\\n') }); r.catch(() => {});`);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 10_000;
  while (!/\d+\n/.test(out)) {
    assert.ok(Date.now() < deadline, 'the command started');
    await sleep(20);
  }
  const sleeper = Number(out.trim());
  assert.ok(pidAlive(sleeper));
  child.kill('SIGTERM');
  await new Promise((r) => child.on('close', r));
  const gone = Date.now() + 5000;
  while (pidAlive(sleeper) && Date.now() < gone) await sleep(20);
  assert.ok(!pidAlive(sleeper), 'the command\'s own child was ended too');
});

const autogroup = (() => {
  try {
    return fs.readFileSync('/proc/sys/kernel/sched_autogroup_enabled', 'utf8').trim() === '1';
  } catch {
    return false;
  }
})();

test('a niced lockstep runs its commands niced, though each leads a session (autogroup) of its own', { skip: !autogroup && 'no autogroup scheduling here' }, async () => {
  // The group is niced just after the command starts (once it leads its session): a command that reads at once may be early.
  const read = `const r = await run('sh', ['-c', 'sleep 0.3; cat /proc/self/autogroup']); process.stdout.write(r.stdout);`;
  const out = await output(node(read, ['nice', '-n', '19']));
  assert.match(out, /nice 19$/m);
  // Without nice the command runs as nice as the test itself: whatever the caller ran the suite with (nice 0 or not).
  const plain = await output(node(read));
  assert.match(plain, new RegExp(`nice ${os.getPriority()}$`, 'm'), 'not niced further: as nice as lockstep');
});
