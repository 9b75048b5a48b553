/**
 * A VM on the daemons of two lab hosts (src/lab/daemon-vm.ts) for one test:
 * the lab QEMU and guest built first, everything ended after the test, the
 * logs kept if it failed.
 */
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { counterGaps, roundInterruption, type ClientSummary } from '../../src/lab/client-driver.js';
import { DaemonVmLab } from '../../src/lab/daemon-vm.js';
import { runtime, endLabDir, testPassed } from './lab.js';

export async function daemonLab(t: TestContext, prefix: string, o: { reprotect?: boolean } = {}): Promise<DaemonVmLab> {
  await runtime(); // the lab QEMU and the demo guest, built before the test's own clock matters
  const d = await DaemonVmLab.create(prefix, o);
  t.after(async () => {
    await d.end();
    endLabDir(d.root, !testPassed(t));
  });
  return d;
}

/** What a client of a VM on the daemons may expect across a failure: its TCP connection kept, no echo lost, no acknowledged write lost. */
export function assertConnectionKept(sum: ClientSummary, label?: string): void {
  const at = label ? `${label}: ` : '';
  assert.equal(sum.echo.closed, false, `${at}the TCP connection stayed open`);
  assert.deepEqual(sum.echo.errors, [], `${at}no echo error`);
  assert.equal(counterGaps(sum.http.requests), undefined, `${at}no acknowledged write lost`);
}

/** A fault in a test's run: what it was, when it struck (wall-clock ms), and when its round ended. */
export interface Fault {
  label: string;
  at: number;
  until: number;
}

/**
 * What the client felt of each fault, from its own record of every answer: the longest time without an answer of the
 * counter and of the echo in that fault's round, and the first answer to a request sent after the fault (never one
 * that was already on its way). One line each, for the test's output.
 */
export function feltLines(sum: ClientSummary, faults: Fault[]): string[] {
  const s = (ms: number | undefined) => (ms === undefined ? 'none' : `${(ms / 1000).toFixed(2)} s`);
  return faults.map((f) => {
    const c = roundInterruption(sum.http.answers, f.at, f.until);
    const e = roundInterruption(sum.echo.answers, f.at, f.until);
    return `${f.label}: longest time without an answer ${s(c.longestGapMs)} (echo ${s(e.longestGapMs)}); the first answer to a request sent after it ${s(c.firstAfterFaultMs)} (echo ${s(e.firstAfterFaultMs)})`;
  });
}
