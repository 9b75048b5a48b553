/**
 * lockstep events and lockstep dashboard: the hosts' event journals merged
 * in time order, and the dashboard for a browser on this machine.
 */
import type { Command } from 'commander';
import { loadHostFile, type HostConfig } from '../config/host.js';
import { clientFor, hostsToAsk, vmOnHosts } from '../daemon/orchestrate.js';
import { mergeRecords } from '../daemon/live-view.js';
import { startDashboardProxy } from '../daemon/dashboard-proxy.js';
import type { JournalRecord } from '../daemon/api-types.js';
import { LockstepError, errorMessage } from '../util/errors.js';
import { sleep } from '../util/time.js';
import { hostFileOf } from './host.js';

const HOST_FILE_HELP = "this host's settings (default: $LOCKSTEP_HOST_FILE, else /etc/lockstep/host.yaml)";
/** --follow asks each host this often. */
const FOLLOW_MS = 1000;

/** --since: an ISO time (2025-06-01T03:12:00Z), or a duration before now (90s, 10m, 2h, 1d). */
export function parseSince(text: string, nowMs: number): number {
  const d = /^(\d+(?:\.\d+)?)(s|m|h|d)$/.exec(text.trim());
  if (d) return nowMs - Number(d[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[d[2] as 's' | 'm' | 'h' | 'd'];
  const t = Date.parse(text);
  if (Number.isNaN(t)) throw new LockstepError(`--since "${text}" is neither a time nor a duration`, { hint: 'e.g. --since 10m, --since 2h, --since 2025-06-01T03:12:00Z' });
  return t;
}

const sec = (ms: unknown) => (typeof ms === 'number' ? `${(ms / 1000).toFixed(2)} s` : '?');

/** One record as a line: its time (UTC), host, VM, kind and reason, and the figures that tell most. */
export function formatRecord(r: JournalRecord): string {
  const f = r.figures;
  let extra = '';
  if (r.kind === 'failover') extra = ` (decided ${sec(f.detectionMs)} after the last checkpoint, then the procedure took ${sec(f.procedureMs)})`;
  else if (r.kind === 'resync' && typeof f.ms === 'number') extra = ` (in ${sec(f.ms)})`;
  else if (r.kind === 'restart' && typeof f.ms === 'number') extra = ` (in ${sec(f.ms)})`;
  return `${r.at}  ${r.host.padEnd(6)} ${(r.vm ?? '-').padEnd(8)} ${r.kind.padEnd(11)} ${r.reason}${extra}`;
}

/** The hosts to ask for VM `vm`'s records: its two hosts when some host knows it, else every host this one knows. */
async function hostsOf(host: HostConfig, vm: string | undefined, only: string | undefined): Promise<string[]> {
  const all = hostsToAsk(host, only);
  if (!vm || only) return all;
  const known = (await vmOnHosts(host, vm)).find((a) => a.status)?.status?.hosts;
  return known ? known.filter((h) => h === host.name || host.peers[h] !== undefined) : all;
}

export function registerObserveCommands(program: Command): void {
  program
    .command('events')
    .summary("what happened to a VM, and why: its hosts' event journals in time order")
    .description(
      "Each host's daemon keeps a journal of every decision its agents took with the reason (failover, fence, resync " +
        'and its steps, restart), what it saw change (protection, role, lease, heartbeat paths, the witness), and every ' +
        "operator's command. lockstep events NAME merges the journals of VM NAME's two hosts in time order (their " +
        "clocks: keep them in sync); without NAME, every record of every host this one knows. Records are durable: a " +
        'daemon restart or a power loss loses none.\n\n' +
        'Exit code: 0; 1 when a host could not be asked (what the others said is still printed).',
    )
    .argument('[vm]', "the VM's name")
    .option('--since <time>', 'only records from then on: a time (2025-06-01T03:12:00Z) or a duration before now (90s, 10m, 2h, 1d)')
    .option('-f, --follow', 'print new records as they come, until Ctrl-C')
    .option('--limit <n>', 'at most this many records per host, the newest (default and most: 10000)')
    .option('--host <name>', 'ask this host only')
    .option('--host-file <file>', HOST_FILE_HELP)
    .option('--json', 'print the records as a JSON array (with --follow: one record per line)')
    .action(async (vm: string | undefined, o: { since?: string; follow?: boolean; limit?: string; host?: string; hostFile?: string; json?: boolean }) => {
      const host = loadHostFile(hostFileOf(o.hostFile));
      const sinceMs = o.since ? parseSince(o.since, Date.now()) : undefined;
      const limit = o.limit === undefined ? undefined : Number(o.limit);
      if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) throw new LockstepError(`--limit ${o.limit}: expected a whole number above 0`);
      const names = await hostsOf(host, vm, o.host);
      if (names.length === 0) throw new LockstepError('no daemon to ask: none runs on this host, and it trusts no other host', { hint: 'start lockstepd here, or trust the VM\'s hosts: lockstep host trust' });
      const lastSeq = new Map<string, number>();
      const down = new Set<string>();
      const ask = async (first: boolean): Promise<JournalRecord[]> => {
        const lists = await Promise.all(
          names.map(async (h) => {
            try {
              const a = await clientFor(host, h, 5000).events({ vm, ...(first ? { sinceMs, limit } : { afterSeq: lastSeq.get(h) ?? 0 }) });
              if (down.delete(h) && !first) process.stderr.write(`lockstep: host ${h} answers again\n`);
              lastSeq.set(h, Math.max(lastSeq.get(h) ?? 0, a.lastSeq));
              if (a.truncated) process.stderr.write(`lockstep: host ${h} has more records than were sent; the oldest were left out (narrow with --since)\n`);
              return a.records.filter((r) => vm === undefined || r.vm === vm || r.vm === null);
            } catch (err) {
              if (!down.has(h)) process.stderr.write(`lockstep: host ${h} cannot be asked: ${errorMessage(err)}\n`);
              down.add(h);
              process.exitCode = 1;
              return [];
            }
          }),
        );
        return mergeRecords(lists);
      };
      const first = await ask(true);
      if (!o.follow) {
        if (o.json) process.stdout.write(JSON.stringify(first, null, 2) + '\n');
        else process.stdout.write(first.length ? first.map(formatRecord).join('\n') + '\n' : `no records${vm ? ` of VM "${vm}"` : ''}${o.since ? ` since ${o.since}` : ''}\n`);
        return;
      }
      const out = (rs: JournalRecord[]) => {
        for (const r of rs) process.stdout.write((o.json ? JSON.stringify(r) : formatRecord(r)) + '\n');
      };
      out(first);
      let stop = false;
      process.once('SIGINT', () => (stop = true));
      while (!stop) {
        await sleep(FOLLOW_MS);
        if (!stop) out(await ask(false));
      }
      process.exitCode = down.size ? 1 : 0;
    });

  program
    .command('dashboard')
    .summary('the live dashboard in your browser: a local port in front of a daemon')
    .description(
      'Every daemon serves a live dashboard (every VM of its host with its two hosts, roles, protection and why not, ' +
        'checkpoint pauses, resync progress, heartbeat paths, lease, recent events), behind the same authentication as ' +
        'its API. lockstep dashboard opens a port on 127.0.0.1 in front of this host\'s daemon (its local socket, as ' +
        'root) or, with --host, of a trusted host\'s daemon (over mutual TLS), and prints the URL to open. Only the ' +
        'browser that opens that URL gets in (it carries a one-time token), and only to read. Runs until Ctrl-C.',
    )
    .option('--host <name>', "a trusted host's daemon instead of this host's")
    .option('--port <port>', 'the local port (0: any free one)', '7780')
    .option('--host-file <file>', HOST_FILE_HELP)
    .action(async (o: { host?: string; port: string; hostFile?: string }) => {
      const host = loadHostFile(hostFileOf(o.hostFile));
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new LockstepError(`--port ${o.port}: expected a port number (0: any free one)`);
      const target = o.host ?? host.name;
      const client = clientFor(host, target, 10_000);
      // Asked once first: a daemon that cannot be reached is said now, not in the browser.
      const info = await client.host();
      const proxy = await startDashboardProxy(client, { port });
      process.stdout.write(`the dashboard of host ${info.name}: open ${proxy.url}\n(read-only; Ctrl-C ends it)\n`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await proxy.close();
    });
}
