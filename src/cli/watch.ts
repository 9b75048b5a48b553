/**
 * `lockstep status --watch`: the dashboard's view in a terminal, redrawn
 * every second from each host's overview (the same merge as the dashboard:
 * daemon/live-view.ts). renderWatch is pure: the view, the width and whether
 * to color in, the text out.
 */
import type { HostConfig } from '../config/host.js';
import { clientFor, hostsToAsk } from '../daemon/orchestrate.js';
import { liveView, type HostAnswer, type LiveView, type VmView, type HostPart } from '../daemon/live-view.js';
import type { JournalRecord } from '../daemon/api-types.js';
import { sleep } from '../util/time.js';
import { errorMessage } from '../util/errors.js';

const ESC = '\x1b[';
type Paint = (code: string, s: string) => string;
const painter = (color: boolean): Paint => (color ? (code, s) => `${ESC}${code}m${s}${ESC}0m` : (_c, s) => s);
const GREEN = '32';
const RED = '31';
const YELLOW = '33';
const DIM = '2';
const BOLD = '1';

const STATE: Record<VmView['state'], { text: string; code: string }> = {
  protected: { text: 'PROTECTED', code: GREEN },
  resyncing: { text: 'RESYNCING', code: YELLOW },
  'failing-over': { text: 'FAILING OVER', code: YELLOW },
  unprotected: { text: 'NOT PROTECTED', code: RED },
  stopped: { text: 'STOPPED', code: DIM },
  unknown: { text: 'UNKNOWN', code: RED },
};

function secs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '-';
  return ms < 1000 ? `${Math.round(ms)} ms` : ms < 60_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** The last values as a line of block characters, from their smallest (▁) to their largest (█). */
export function sparkline(values: number[], width: number): string {
  const bars = '▁▂▃▄▅▆▇█';
  const xs = values.slice(-width);
  if (xs.length === 0) return '';
  const lo = Math.min(...xs);
  const span = Math.max(...xs) - lo;
  return xs.map((v) => bars[span === 0 ? 3 : Math.min(bars.length - 1, Math.floor(((v - lo) / span) * (bars.length - 1) + 0.5))]).join('');
}

function clip(s: string, width: number): string {
  return s.length <= width ? s : `${s.slice(0, Math.max(0, width - 1))}…`;
}

function partLine(p: HostPart, paint: Paint, hostWidth: number): string {
  const name = p.host.padEnd(hostWidth);
  if (!p.reachable) return `${name}  ${paint(RED, 'NOT ANSWERING')}  ${p.problem ?? ''}`;
  const v = p.vm;
  if (!v) return `${name}  no such VM`;
  const a = v.agent;
  if (!a) return `${name}  ${v.phase}${v.detail ? ` (${v.detail})` : ''}`;
  const role = a.role.padEnd(9);
  const prot = a.protected ? paint(GREEN, 'protected    ') : paint(RED, 'not protected');
  const qemu = a.qemu.state === 'alive' ? `QEMU ${a.qemuPid}` : paint(RED, `QEMU ${a.qemu.state}`);
  const cp = a.qemu.checkpointAgeMs === null ? '' : `  checkpoint ${secs(a.qemu.checkpointAgeMs)} ago`;
  const paths = a.peer.paths.map((x) => (x.lastHeardMs !== null && x.lastHeardMs < v.heartbeatTimeoutMs ? paint(GREEN, '●') : paint(RED, '○'))).join('');
  const hb = `  heartbeat ${paths}${a.peer.rttMs !== null ? ` rtt ${a.peer.rttMs} ms` : ''}`;
  const lease = a.lease.witness ? `  lease ${a.lease.held ? `held ${secs(a.lease.remainingMs)}` : '-'}` : '';
  const epoch = a.disk.epoch ? `  epoch ${a.disk.epoch.gen}/${a.disk.epoch.by}` : `  ${paint(RED, 'epoch unknown')}`;
  return `${name}  ${role} ${prot}  ${qemu}${cp}${hb}${lease}${epoch}`;
}

function eventLine(r: JournalRecord, width: number): string {
  const t = r.at.slice(11, 23);
  return clip(`${t} ${r.host} ${r.kind.padEnd(11)} ${r.reason}`, width);
}

/** The text of one VM. */
function vmBlock(v: VmView, paint: Paint, width: number): string[] {
  const st = STATE[v.state];
  const plane = v.parts.find((p) => p.vm?.dataPlane)?.vm?.dataPlane;
  const lines = [`${paint(BOLD, v.name)}  ${paint(st.code, `● ${st.text}`)}  ${paint(DIM, `${v.hosts.join(' ⇄ ')}${plane ? `, data plane ${plane === 'tls' ? 'TLS' : 'plain TCP'}` : ''}`)}`];
  for (const w of v.why) lines.push(clip(`  ${paint(v.state === 'resyncing' || v.state === 'failing-over' ? YELLOW : RED, '!')} ${w}`, width + 12));
  const hostWidth = Math.max(...v.hosts.map((h) => h.length));
  for (const p of v.parts) lines.push(`  ${partLine(p, paint, hostWidth)}`);
  const r = v.parts.find((p) => p.vm?.agent?.work?.kind === 'reprotect');
  const w = r?.vm?.agent?.work;
  if (r && w) {
    const m = w.mirror;
    const frac = m ? Math.min(1, m.offset / Math.max(1, m.len)) : 0;
    const barWidth = 24;
    const filled = Math.round(frac * barWidth);
    lines.push(`  resync ${r.host} → ${v.hosts.find((h) => h !== r.host)}  ${paint(YELLOW, '█'.repeat(filled))}${paint(DIM, '░'.repeat(barWidth - filled))} ${m ? `${Math.round(frac * 100)}%` : ''}  ${w.step ?? w.phase ?? ''}  ${secs(w.runningMs)}`);
  }
  const pauseParts = v.parts.flatMap((p) => {
    const s = p.vm?.pauseStats;
    if (!s || s.count === 0 || !p.vm) return [];
    return [`${p.host}: ${s.count} · p50 ${Math.round(s.p50Ms ?? 0)} ms · p99 ${Math.round(s.p99Ms ?? 0)} ms ${sparkline(p.vm.pauses.map(([, ms]) => ms), 20)}`];
  });
  lines.push(`  pauses, last minute: ${pauseParts.length ? pauseParts.join('   ') : 'none'}`);
  for (const e of v.events.slice(-4)) lines.push(`  ${paint(DIM, eventLine(e, width - 2))}`);
  return lines;
}

/** The whole view as text, `width` columns (lines may carry color codes when `color`). */
export function renderWatch(view: LiveView, o: { vm?: string; width: number; color: boolean }): string {
  const paint = painter(o.color);
  const vms = o.vm ? view.vms.filter((v) => v.name === o.vm) : view.vms;
  const prot = vms.filter((v) => v.protected).length;
  const at = new Date(view.atMs).toISOString().slice(11, 19);
  const head = `lockstep  ${at} UTC  ${vms.length} VM${vms.length === 1 ? '' : 's'}, ${prot === vms.length ? paint(GREEN, `${prot} protected`) : paint(RED, `${vms.length - prot} not protected`)}  ${paint(DIM, 'hosts:')} ${view.hosts.map((h) => (h.reachable ? h.host : paint(RED, `${h.host} (not answering)`))).join(', ')}`;
  const out = [head, paint(DIM, '─'.repeat(Math.min(o.width, 100)))];
  if (vms.length === 0) out.push(o.vm ? `no host knows a VM "${o.vm}"` : 'no VMs (lockstep up -f FILE starts one)');
  for (const v of vms) out.push(...vmBlock(v, paint, o.width), '');
  out.push(paint(DIM, 'Ctrl-C ends the watch.'));
  return out.join('\n');
}

/** Asks every host (or `only`) for its overview now; a host that cannot be asked says why. */
async function answers(host: HostConfig, only: string | undefined, last: Map<string, HostAnswer>): Promise<HostAnswer[]> {
  const names = hostsToAsk(host, only);
  return Promise.all(
    names.map(async (h) => {
      try {
        const overview = await clientFor(host, h, 2000).overview(Date.now() - 60_000);
        const a: HostAnswer = { host: h, overview, error: null, ageMs: 0 };
        last.set(h, a);
        return a;
      } catch (err) {
        const prev = last.get(h);
        return { host: h, overview: prev?.overview ?? null, error: errorMessage(err), ageMs: prev?.overview ? Date.now() - prev.overview.atMs : null };
      }
    }),
  );
}

/**
 * Redraws the view every `intervalMs` until interrupted (or `count` times):
 * in place on a terminal, one frame after another otherwise; with `json`,
 * one LiveView per line.
 */
export async function watchStatus(host: HostConfig, o: { vm?: string; only?: string; intervalMs: number; count?: number; json: boolean; out: NodeJS.WriteStream }): Promise<void> {
  const tty = o.out.isTTY === true && !o.json;
  const last = new Map<string, HostAnswer>();
  let stop = false;
  const onInt = () => (stop = true);
  process.once('SIGINT', onInt);
  try {
    for (let i = 0; !stop && (o.count === undefined || i < o.count); i++) {
      const t0 = performance.now();
      const view = liveView('lockstep status --watch', await answers(host, o.only, last), Date.now());
      if (o.json) o.out.write(JSON.stringify(o.vm ? { ...view, vms: view.vms.filter((v) => v.name === o.vm) } : view) + '\n');
      else {
        const text = renderWatch(view, { vm: o.vm, width: o.out.columns ?? 120, color: tty });
        o.out.write(tty ? `${ESC}H${ESC}2J${text}\n` : `${text}\n\n`);
      }
      if (o.count !== undefined && i + 1 >= o.count) break;
      await sleep(Math.max(0, o.intervalMs - (performance.now() - t0)));
    }
  } finally {
    process.off('SIGINT', onInt);
  }
}
