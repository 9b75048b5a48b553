/**
 * The dashboard in a real headless browser (Debian's chromium), against the
 * daemon's real API routes and live hub, fed made-up overviews (no VMs): it
 * draws both hosts of a VM, follows the stream without a reload, shows a
 * host that stops answering within 2 s, a resync's progress, and logs no
 * error. And the proxy of `lockstep dashboard`: read-only, token only.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import http from 'node:http';
import type net from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import { apiApp, type DaemonView } from '../../src/daemon/api.js';
import { LiveHub, type LiveSource } from '../../src/daemon/live.js';
import type { ApiClient } from '../../src/daemon/client.js';
import type { Overview } from '../../src/daemon/api-types.js';
import { headless } from '../helpers/browser.js';
import { overview, vmOverview, pausesUntil, record } from '../helpers/synthetic.js';

/** The world the made-up daemon of host b describes: a's power, and what b's agent sees. */
interface World {
  aPowered: boolean;
  aLostAt: number | null;
  resyncPct: number | null;
}

function bOverview(w: World, now: number): Overview {
  const silentMs = w.aLostAt === null ? null : now - w.aLostAt;
  const resync = w.resyncPct !== null;
  const events = [
    record('b', 1, now - 240_000, 'daemon', 'the daemon started (lockstep 0.1.0, pid 4242)', null),
    record('b', 2, now - 200_000, 'protection', 'protected: COLO runs and its checkpoints flow', 'web', { protected: true }),
    ...(w.aLostAt !== null
      ? [
          record('b', 3, w.aLostAt + 520, 'heartbeat', 'heartbeat path 1 from a: silent (last heard 520 ms ago)', 'web', { heard: false }),
          record('b', 4, w.aLostAt + 5600, 'decision', 'takeover: no heartbeat and no checkpoint for 5512 ms: the primary is unreachable', 'web', { action: 'takeover' }),
        ]
      : []),
  ];
  const agent = resync
    ? {
        role: 'alone' as const,
        protected: false,
        peer: 'a',
        lease: true,
        work: { kind: 'reprotect', phase: 'resuming', why: "a's agent is back: resync it as our new secondary", runningMs: 2300, step: 'mirroring our disk', mirror: { offset: (w.resyncPct! / 100) * 64 * 2 ** 20, len: 64 * 2 ** 20 } },
      }
    : {
        role: 'secondary' as const,
        protected: true,
        peer: 'a',
        heardMs: silentMs ?? undefined,
        degraded: silentMs !== null && silentMs > 500 ? [`no heartbeat from a for ${silentMs} ms`] : [],
        waiting: silentMs !== null && silentMs > 500 ? "no heartbeat, but checkpoints continue: the primary's agent is down, not its VM" : null,
      };
  return overview('b', now, [vmOverview('b', 'web', agent, { pauses: pausesUntil(now, { medianMs: 62 }) }), vmOverview('b', 'db', { role: 'primary', protected: true, peer: 'a', lease: true }, { hosts: ['b', 'a'], pauses: pausesUntil(now, { medianMs: 48, everyMs: 3000 }) })], events);
}

function aOverview(now: number): Overview {
  return overview('a', now, [vmOverview('a', 'web', { role: 'primary', protected: true, peer: 'b', lease: true }, { pauses: pausesUntil(now, { medianMs: 66 }) }), vmOverview('a', 'db', { role: 'secondary', protected: true, peer: 'b' }, { hosts: ['b', 'a'], pauses: pausesUntil(now, { medianMs: 51, everyMs: 3000 }) })], [
    record('a', 1, now - 250_000, 'daemon', 'the daemon started (lockstep 0.1.0, pid 4141)', null),
    record('a', 2, now - 201_000, 'decision', "reprotect: b's agent is back (down, disk 2/a, ours 2/a): resync it as our new secondary", 'web', { action: 'reprotect' }),
  ]);
}

/** Host b's daemon, made up: the real API routes and live hub, a peer a that answers or, powered off, hangs 1 s and fails. */
async function fakeDaemonOfB(w: World): Promise<{ url: string; hub: LiveHub; close: () => Promise<void> }> {
  const peerA = {
    overview: () =>
      w.aPowered ? Promise.resolve(aOverview(Date.now())) : new Promise<Overview>((_, reject) => setTimeout(() => reject(new Error('host "a" (10.10.3.1:7700) did not answer GET /overview within 1000 ms')), 1000)),
    close: () => {},
  } as unknown as ApiClient;
  const src: LiveSource = { host: 'b', overview: () => bOverview(w, Date.now()), peers: () => ['a'], clientFor: () => peerA, wallNow: Date.now };
  const hub = new LiveHub(src);
  const view = {
    overview: () => bOverview(w, Date.now()),
    live: () => hub,
    events: () => ({ host: 'b', records: [], lastSeq: 0, truncated: false }),
    metricsText: async () => ({ body: '', contentType: 'text/plain' }),
    noteCommand: () => {},
    peerByFingerprint: () => undefined,
  } as unknown as DaemonView;
  const server = createAdaptorServer({ fetch: apiApp(view, 'local').fetch as never });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    hub,
    close: async () => {
      hub.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        (server as unknown as http.Server).closeAllConnections();
      });
    },
  };
}

const shots = process.env.LOCKSTEP_DASHBOARD_SHOTS;

test('the dashboard draws both hosts of each VM, follows the stream, shows a host lost within 2 s, and logs no error', { timeout: 60_000 }, async (t) => {
  const w: World = { aPowered: true, aLostAt: null, resyncPct: null };
  const d = await fakeDaemonOfB(w);
  t.after(() => d.close());
  const b = await headless();
  t.after(() => b.close());
  const { page } = b;
  await page.goto(`${d.url}/dashboard/`);
  const web = page.locator('[data-vm="web"]');
  await web.locator('[data-testid="state"][data-state="protected"]').waitFor({ timeout: 10_000 });
  assert.deepEqual(await web.locator('.part').evaluateAll((els) => els.map((e) => e.getAttribute('data-host'))), ['a', 'b'], 'both hosts of the VM, in its order');
  assert.deepEqual(await web.locator('.part [data-testid="role"]').allTextContents(), ['primary', 'secondary']);
  assert.ok((await page.locator('[data-vm="web"] .chart circle').count()) > 100, 'the checkpoint pauses are drawn');
  assert.equal(await page.locator('[data-vm]').count(), 2, 'every VM of the host');
  if (shots) await page.screenshot({ path: path.join(shots, 'synthetic-protected.png'), fullPage: true });

  // Host a loses power: its daemon stops answering, b's agent hears nothing.
  const lostAt = Date.now();
  w.aPowered = false;
  w.aLostAt = lostAt;
  await web.locator('[data-testid="state"]:not([data-state="protected"])').waitFor({ timeout: 2000 });
  const changedMs = Date.now() - lostAt;
  await web.locator('.part[data-host="a"][data-reachable="false"]').waitFor({ timeout: 2000 });
  assert.ok(Date.now() - lostAt < 2000, `host a shown as not answering ${Date.now() - lostAt} ms after its power loss`);
  assert.match(await web.locator('[data-testid="why"]').innerText(), /host a cannot be asked/);
  process.stderr.write(`# the page changed ${changedMs} ms after the made-up power loss (no reload)\n`);
  await page.waitForTimeout(600);
  if (shots) await page.screenshot({ path: path.join(shots, 'synthetic-host-lost.png'), fullPage: true });

  // It comes back; b resyncs it: the resync's progress is drawn.
  w.aPowered = true;
  w.aLostAt = null;
  w.resyncPct = 40;
  await web.locator('[data-testid="resync"]').waitFor({ timeout: 3000 });
  await web.locator('[data-testid="state"][data-state="resyncing"]').waitFor({ timeout: 3000 });
  assert.match(await web.locator('[data-testid="resync"]').innerText(), /40%/);
  if (shots) await page.screenshot({ path: path.join(shots, 'synthetic-resync.png'), fullPage: true });
  w.resyncPct = null;
  await web.locator('[data-testid="state"][data-state="protected"]').waitFor({ timeout: 3000 });
  assert.equal(d.hub.clients, 1, 'one live view open: the page never reloaded');
  assert.deepEqual(b.errors, [], 'no console or page error');
});
