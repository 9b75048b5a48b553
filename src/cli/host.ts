/**
 * lockstep host init | trust | show, and lockstep daemon: one machine's
 * settings and identity, and the daemon that owns its protected VMs.
 */
import type { Command } from 'commander';
import pino from 'pino';
import { DEFAULT_HOST_FILE, loadHostFile } from '../config/host.js';
import { hostInit, hostTrust } from '../daemon/host-init.js';
import { Daemon } from '../daemon/daemon.js';
import { ApiClient } from '../daemon/client.js';
import type { HostInfo } from '../daemon/api-types.js';
import { print } from './output.js';

/** The host file: --host-file, else $LOCKSTEP_HOST_FILE, else /etc/lockstep/host.yaml. */
export function hostFileOf(opt: string | undefined): string {
  return opt ?? process.env.LOCKSTEP_HOST_FILE ?? DEFAULT_HOST_FILE;
}

const HOST_FILE_HELP = `this host's settings (default: $LOCKSTEP_HOST_FILE, else ${DEFAULT_HOST_FILE})`;

function list(v: string): string[] {
  return v.split(',').map((s) => s.trim()).filter(Boolean);
}

function formatHost(h: HostInfo): string {
  const lines = [
    `host "${h.name}": lockstep ${h.version}, daemon pid ${h.pid}, up ${(h.uptimeMs / 1000).toFixed(0)} s (since ${h.startedAt})`,
    `  replication address ${h.addresses.replication}; heartbeat ${h.addresses.heartbeat.join(', ')}${h.addresses.heartbeatPort ? ` (sessions on port ${h.addresses.heartbeatPort})` : ''}`,
    `  API: ${h.api.socket}${h.api.listen ? ` and TLS on ${h.api.listen}` : ' (no TLS listener: other hosts cannot reach it)'}`,
    h.peers.length ? `  trusts: ${h.peers.map((p) => `${p.name} at ${p.api} (${p.fingerprint.slice(0, 23)}…)`).join('; ')}` : '  trusts no other host yet (lockstep host trust)',
    `  VMs: ${h.vms.length ? h.vms.join(', ') : 'none'}`,
    ...(h.heartbeatSessions ?? []).map((x) => `  heartbeat session with ${x.peer} on ${x.path}: ${x.up ? 'up' : 'down'}, carrying ${x.vms.length ? x.vms.join(', ') : 'no VM'}`),
    `  (you are ${h.caller})`,
  ];
  return lines.join('\n');
}

export function registerHostCommands(program: Command): void {
  const host = program
    .command('host')
    .summary("this machine's settings and identity (init, trust, show)")
    .description(
      'Each machine that runs protected VMs has a host file (default /etc/lockstep/host.yaml) with its name, the ' +
        'addresses of its replication and heartbeat networks, where its daemon\'s API listens, and a TLS identity. ' +
        'Set up two hosts:\n\n' +
        '  on a:  lockstep host init --name a --replication 10.0.1.1 --api 10.0.1.1\n' +
        '  on b:  lockstep host init --name b --replication 10.0.1.2 --api 10.0.1.2\n' +
        '  copy each /etc/lockstep/tls/host.crt to the other host, then\n' +
        '  on a:  lockstep host trust --name b --api 10.0.1.2 b.crt\n' +
        '  on b:  lockstep host trust --name a --api 10.0.1.1 a.crt\n' +
        '  on both: systemctl enable --now lockstepd',
    );

  host
    .command('init')
    .summary('write the host file and a new TLS identity')
    .description(
      'Writes the host file and this host\'s key (0600) and certificate. The key is made here and never leaves the ' +
        'host; give the certificate to the other hosts (lockstep host trust there). Refuses to replace an existing ' +
        'host file or identity without --force (hosts that trust the old certificate would then refuse this one).',
    )
    .requiredOption('--name <name>', 'this host\'s name, as VM files will name it (a, b, node1, ...)')
    .requiredOption('--replication <address>', 'its address on the replication network (COLO\'s data plane listens there)')
    .option('--heartbeat <addresses>', 'its heartbeat addresses, comma-separated: a dedicated network first, then the replication address (a cut replication link is then seen in half a second, not at the stall bound); default: the replication address alone', list)
    .option('--api <address[:port]>', 'serve the API to the other hosts here, over TLS (port 7700 unless given)')
    .option('--state-dir <dir>', 'where the daemon keeps its state (default /var/lib/lockstep)')
    .option('--api-socket <file>', 'the local API\'s socket (default /run/lockstep/api.sock)')
    .option('--metrics <address:port>', 'also serve the Prometheus metrics here in plain HTTP, read-only, for a scraper without a client certificate (they are always on the API: GET /metrics)')
    .option('--host-file <file>', HOST_FILE_HELP)
    .option('--force', 'replace an existing host file and identity')
    .option('--json', 'print the result as JSON')
    .action(async (o: { name: string; replication: string; heartbeat?: string[]; api?: string; stateDir?: string; apiSocket?: string; metrics?: string; hostFile?: string; force?: boolean; json?: boolean }) => {
      const r = await hostInit({ file: hostFileOf(o.hostFile), name: o.name, replication: o.replication, heartbeat: o.heartbeat, api: o.api, stateDir: o.stateDir, socket: o.apiSocket, metrics: o.metrics, force: o.force });
      print(o.json, r, () =>
        [
          `wrote ${r.hostFile} and this host's identity`,
          `  certificate ${r.certFile}`,
          `  fingerprint ${r.fingerprint}`,
          'next: copy the certificate to the other host and run there',
          `  lockstep host trust --name ${o.name} --api ${o.api ?? 'ADDRESS'} ${o.name}.crt`,
          'then start the daemon: systemctl enable --now lockstepd',
        ].join('\n'),
      );
    });

  host
    .command('trust')
    .summary("trust another host: pin its certificate under its name")
    .description(
      "Adds the other host to this host file's peers: its name, where its API listens, and its certificate, " +
        'the only one accepted from it (compare the fingerprint printed with what lockstep host init printed there). ' +
        'Restart the daemon afterwards (systemctl restart lockstepd): it reads the host file at start.',
    )
    .argument('<cert>', "the other host's certificate (its /etc/lockstep/tls/host.crt)")
    .requiredOption('--name <name>', "the other host's name (as its host file says)")
    .requiredOption('--api <address[:port]>', "where the other host's API listens (port 7700 unless given)")
    .option('--host-file <file>', HOST_FILE_HELP)
    .option('--force', 'replace the certificate pinned for that name (only if that host was set up anew)')
    .option('--json', 'print the result as JSON')
    .action((cert: string, o: { name: string; api: string; hostFile?: string; force?: boolean; json?: boolean }) => {
      const r = hostTrust({ file: hostFileOf(o.hostFile), name: o.name, api: o.api, certFile: cert, force: o.force });
      print(o.json, { name: o.name, api: r.host.peers[o.name]!.api, fingerprint: r.fingerprint }, () =>
        [`this host (${r.host.name}) now trusts "${o.name}" at ${r.host.peers[o.name]!.api}`, `  fingerprint ${r.fingerprint}`, 'restart the daemon to use it: systemctl restart lockstepd'].join('\n'),
      );
    });

  host
    .command('show')
    .summary("what a host's daemon says of itself")
    .description('Asks this host\'s daemon (over its local socket, as root), or with --host another trusted host\'s (over TLS).')
    .option('--host <name>', 'ask this trusted host instead')
    .option('--host-file <file>', HOST_FILE_HELP)
    .option('--json', 'print the answer as JSON')
    .action(async (o: { host?: string; hostFile?: string; json?: boolean }) => {
      const h = loadHostFile(hostFileOf(o.hostFile));
      const client = o.host && o.host !== h.name ? ApiClient.remote(h, o.host) : ApiClient.local(h);
      const info = await client.host();
      print(o.json, info, () => formatHost(info));
    });

  program
    .command('daemon')
    .summary('run the lockstep daemon of this host (lockstepd.service runs it)')
    .description(
      'The daemon of one host: serves the API on the local socket (root) and over TLS to the hosts it trusts, and ' +
        'keeps its state under stateDir. Logs JSON lines to stdout (the journal, under systemd). Ends on SIGTERM.',
    )
    .option('--host-file <file>', HOST_FILE_HELP)
    .action(async (o: { hostFile?: string }) => {
      const h = loadHostFile(hostFileOf(o.hostFile));
      const log = pino({ base: { host: h.name }, timestamp: pino.stdTimeFunctions.isoTime });
      const d = new Daemon(h, { log: (level, msg, detail) => log[level](detail ?? {}, msg), logger: log });
      await d.start();
      log.info({ stateDir: h.stateDir, version: d.hostInfo('').version }, 'daemon started');
      const end = (sig: string) => {
        log.info({ signal: sig }, 'daemon stopping');
        void d.stop().finally(() => process.exit(0));
      };
      process.once('SIGTERM', () => end('SIGTERM'));
      process.once('SIGINT', () => end('SIGINT'));
    });
}
