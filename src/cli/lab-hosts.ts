/**
 * lockstep lab up|down and the chaos verbs: a lab of separate hosts on this
 * machine (a network and a mount namespace per host, so that they share
 * neither cables nor files), with a lockstep daemon on host a and on host b,
 * a management host beside the witness, a client on the guest LAN, and VM
 * "web" protected between a and b, brought up with `lockstep up -f` from the
 * management host as an operator would. Kept between commands in a directory
 * (default .lockstep/lab).
 */
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { Command } from 'commander';
import { DaemonVmLab } from '../lab/daemon-vm.js';
import { LINKS, type LinkName } from '../lab/hosts.js';
import { createProgress } from '../util/progress.js';
import { LockstepError } from '../util/errors.js';
import { print } from './output.js';

const DEFAULT_DIR = path.join('.lockstep', 'lab');
export const LAB_GUEST = '10.0.2.15';
const HOSTS = ['a', 'b', 'mgmt', 'client', 'switch'] as const;
type LabHost = (typeof HOSTS)[number];

async function openLab(dir: string): Promise<DaemonVmLab> {
  const lab = await DaemonVmLab.open(path.resolve(dir));
  if (!lab) throw new LockstepError(`no lab is up in ${path.resolve(dir)}`, { hint: 'start one with: lockstep lab up' + (dir === DEFAULT_DIR ? '' : ` --dir ${dir}`) });
  return lab;
}

function nodeHost(who: string): 'a' | 'b' {
  if (who !== 'a' && who !== 'b') throw new LockstepError(`"${who}" is not a node host of the lab`, { hint: 'say a or b' });
  return who;
}

/** a, b, primary or secondary → the host (primary: the one whose agent writes the disk). */
async function hostOf(lab: DaemonVmLab, who: string): Promise<'a' | 'b'> {
  if (who === 'a' || who === 'b') return who;
  if (who !== 'primary' && who !== 'secondary') throw new LockstepError(`"${who}" is not a node`, { hint: 'say a, b, primary or secondary' });
  const writer = await lab.writer();
  if (!writer) throw new LockstepError('no host runs the VM as its primary now', { hint: 'see lockstep lab status' });
  return who === 'primary' ? writer : writer === 'a' ? 'b' : 'a';
}

export function labSummary(lab: DaemonVmLab): string {
  const h = lab.hosts;
  return [
    'hosts (each a network namespace and a mount namespace of its own):',
    `  a        ${h.ns.a.padEnd(12)} lockstep daemon; replication ${h.addr.replication.a}, heartbeat ${h.addr.heartbeat.a}, API ${h.addr.mgmt.a}`,
    `  b        ${h.ns.b.padEnd(12)} lockstep daemon; replication ${h.addr.replication.b}, heartbeat ${h.addr.heartbeat.b}, API ${h.addr.mgmt.b}`,
    `  mgmt     ${h.ns.witness.padEnd(12)} management host and witness, ${h.addr.mgmt.witness}; the VM file is its ${lab.vmFile}`,
    `  client   ${h.ns.client.padEnd(12)} ${h.addr.client} on the guest LAN; the guest is ${LAB_GUEST}`,
    `files and logs: ${path.relative(process.cwd(), lab.root) || lab.root} (hosts/*/: each host's /etc/lockstep, /var/lib/lockstep)`,
    '',
    'try:',
    `  lockstep lab run mgmt status ${lab.vm}            the CLI on the management host, as an operator`,
    `  lockstep lab run mgmt -- events ${lab.vm}         what happened to it and why, both hosts' journals in time order`,
    `  lockstep lab run mgmt -- status --watch ${lab.vm} the live view, redrawn every second (Ctrl-C ends it)`,
    `  lockstep lab exec client -- wget -qO- http://${LAB_GUEST}/cgi-bin/cnt     the guest's disk counter`,
    '  lockstep lab power-off primary         the primary\'s host loses power; lockstep lab power-on a|b',
    '  lockstep lab kill primary              kill -9 its QEMU (--daemon: the host\'s daemon; --freeze: SIGSTOP)',
    '  lockstep lab reboot secondary          the host restarts: its processes killed, its daemon started again',
    '  lockstep lab cut heartbeat             pull a cable (also: replication, witness-a, lan-b, ...); lockstep lab heal',
    '  lockstep lab down',
  ].join('\n');
}

export function registerLabHostsCommands(lab: Command): void {
  const dirOpt = ['--dir <dir>', 'where the lab keeps its hosts\' files and its logs', DEFAULT_DIR] as const;

  lab
    .command('up')
    .description(
      'create a lab of separate hosts on this machine (each a network namespace and a mount namespace: hosts a and b ' +
        'with a lockstep daemon each, a management host beside a witness, a client, and a switch; replication, ' +
        'heartbeat, management and the guest LAN each on their own cable), then protect VM "web" between a and b with ' +
        '`lockstep up -f` from the management host. Needs root. Stop it with lockstep lab down.',
    )
    .option(...dirOpt)
    .option('--json', 'print the lab as JSON')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      const l = await labUp(path.resolve(opts.dir), { onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      progress.done(`VM "${l.vm}" protected between lab hosts a and b`);
      print(opts.json, { dir: l.root, hosts: l.hosts.ns, addresses: l.hosts.addr, guest: LAB_GUEST, vmFile: l.vmFile }, () => labSummary(l));
    });

  lab
    .command('down')
    .description("stop the lab: its VM (lockstep down from the management host), its daemons, the witness, and remove its hosts. Logs and the hosts' files stay in the lab directory.")
    .option(...dirOpt)
    .option('--json', 'print the result as JSON')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const root = path.resolve(opts.dir);
      const l = await DaemonVmLab.open(root);
      if (l) {
        // Cleanly where it can (a host that is off cannot be asked); end() then ends whatever still runs.
        await l.lab.cli('mgmt', ['down', l.vm], { timeoutMs: 120_000 }).catch(() => undefined);
        await l.end();
      }
      print(opts.json, { dir: root, removed: l !== undefined }, () => (l ? `lab in ${root} removed (logs kept there)` : `no lab was up in ${root}`));
    });

  lab
    .command('status')
    .description("the lab's hosts, and `lockstep status` of its VM as the management host sees it")
    .option(...dirOpt)
    .option('--json', 'print as JSON')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const l = await openLab(opts.dir);
      const r = await l.lab.cli('mgmt', ['status', l.vm, ...(opts.json ? ['--json'] : [])], { timeoutMs: 30_000 });
      if (opts.json) process.stdout.write(JSON.stringify({ dir: l.root, hosts: l.hosts.ns, vm: r.stdout.trim() ? JSON.parse(r.stdout) : null }, null, 2) + '\n');
      else process.stdout.write(labSummary(l) + '\n\n' + r.stdout + r.stderr);
      process.exitCode = r.code ?? 1;
    });

  lab
    .command('run')
    .argument('<host>', 'a, b or mgmt')
    .argument('<args...>', 'the lockstep command and its arguments (put -- before options)')
    .description('run a lockstep command on a lab host, as its operator would there, e.g. lockstep lab run mgmt -- status web --json')
    .option(...dirOpt)
    .action(async (host: string, args: string[], opts: { dir: string }) => {
      if (host !== 'a' && host !== 'b' && host !== 'mgmt') throw new LockstepError(`"${host}" is not a lab host that runs lockstep`, { hint: 'say a, b or mgmt' });
      runOnLabHost(await openLab(opts.dir), host, [process.execPath, process.argv[1]!, ...args]);
    });

  lab
    .command('kill')
    .argument('<node>', 'a, b, primary or secondary')
    .description("chaos: kill -9 the VM's QEMU on a host (default), the host's daemon (--daemon), or freeze the QEMU with SIGSTOP (--freeze)")
    .option('--daemon', "kill the host's lockstep daemon instead (its QEMU runs on; lockstep lab start-daemon restarts it)")
    .option('--freeze', "SIGSTOP the QEMU instead of killing it (the agent's watchdog is expected to end it)")
    .option(...dirOpt)
    .option('--json', 'print what was done as JSON')
    .action(async (who: string, opts: { dir: string; daemon?: boolean; freeze?: boolean; json?: boolean }) => {
      const l = await openLab(opts.dir);
      const h = await hostOf(l, who);
      let pid: number | undefined;
      let what: string;
      if (opts.daemon) {
        pid = await l.lab.daemonPid(h);
        if (!pid) throw new LockstepError(`the daemon of host ${h} is not running`, { hint: `lockstep lab start-daemon ${h}` });
        what = `daemon of host ${h}`;
      } else {
        pid = (await l.status()).of(h)?.agent?.qemuPid ?? undefined;
        if (!pid) throw new LockstepError(`host ${h} runs no QEMU for the VM (or cannot be asked)`, { hint: 'see lockstep lab status' });
        what = `QEMU of host ${h}`;
      }
      const signal = opts.freeze && !opts.daemon ? 'SIGSTOP' : 'SIGKILL';
      process.kill(pid, signal);
      print(opts.json, { host: h, pid, signal, daemon: opts.daemon === true }, () => `${signal} sent to the ${what} (pid ${pid})`);
    });

  lab
    .command('power-off')
    .argument('<node>', 'a, b, primary or secondary')
    .description('chaos: the host loses power: its cables go dead at once (nothing it had open is reset), then its daemon and QEMUs are killed; its disks and state stay. lockstep lab power-on brings it back.')
    .option(...dirOpt)
    .action(async (who: string, opts: { dir: string }) => {
      const l = await openLab(opts.dir);
      const h = await hostOf(l, who);
      const { pids } = await l.lab.powerLoss(l.hosts, h);
      process.stdout.write(`host ${h} is off (${pids.length} processes killed, its cables dead); lockstep lab power-on ${h}\n`);
    });

  lab
    .command('power-on')
    .argument('<host>', 'a or b')
    .description('the host comes back as after a boot: its cables connected, its daemon started on its old state (no QEMU yet: the daemon decides)')
    .option(...dirOpt)
    .action(async (who: string, opts: { dir: string }) => {
      const l = await openLab(opts.dir);
      const h = nodeHost(who);
      await l.hosts.heal();
      const pid = await l.lab.startDaemon(h);
      process.stdout.write(`host ${h} is on: its daemon runs (pid ${pid}); watch it protect the VM again: lockstep lab status\n`);
    });

  lab
    .command('reboot')
    .argument('<node>', 'a, b, primary or secondary')
    .description('chaos: the host restarts: every process in it killed (the kernel resets their connections), then its daemon started again on its old state')
    .option(...dirOpt)
    .action(async (who: string, opts: { dir: string }) => {
      const l = await openLab(opts.dir);
      const h = await hostOf(l, who);
      await l.lab.crash(h);
      const pid = await l.lab.startDaemon(h);
      process.stdout.write(`host ${h} rebooted: its daemon runs again (pid ${pid}), no QEMU yet\n`);
    });

  lab
    .command('start-daemon')
    .argument('<host>', 'a or b')
    .description("start a host's daemon again (after lockstep lab kill --daemon): it re-attaches to the QEMUs that still run")
    .option(...dirOpt)
    .action(async (who: string, opts: { dir: string }) => {
      const l = await openLab(opts.dir);
      const pid = await l.lab.startDaemon(nodeHost(who));
      process.stdout.write(`the daemon of host ${who} runs (pid ${pid})\n`);
    });

  lab
    .command('cut')
    .argument('<link...>', `cables to pull: ${LINKS.join(', ')}`)
    .description('chaos: take cables down (packets stop without a reset, as when a cable is pulled); lockstep lab heal reconnects them')
    .option(...dirOpt)
    .action(async (links: string[], opts: { dir: string }) => {
      const bad = links.filter((x) => !(LINKS as readonly string[]).includes(x));
      if (bad.length) throw new LockstepError(`unknown link ${bad.join(', ')}`, { hint: `links: ${LINKS.join(', ')}` });
      const l = await openLab(opts.dir);
      for (const x of links) await l.hosts.cut(x as LinkName);
      process.stdout.write(`cut: ${links.join(', ')}\n`);
    });

  lab
    .command('isolate')
    .argument('<node>', 'a, b, primary or secondary')
    .description("chaos: cut every cable of a node's host (replication, heartbeat, management, LAN) while it runs on")
    .option(...dirOpt)
    .action(async (who: string, opts: { dir: string }) => {
      const l = await openLab(opts.dir);
      const h = await hostOf(l, who);
      await l.hosts.isolate(h);
      process.stdout.write(`host ${h} isolated; lockstep lab heal reconnects it\n`);
    });

  lab
    .command('heal')
    .description('reconnect every cable of the lab')
    .option(...dirOpt)
    .action(async (opts: { dir: string }) => {
      await (await openLab(opts.dir)).hosts.heal();
      process.stdout.write('every cable connected\n');
    });

  lab
    .command('exec')
    .argument('<host>', HOSTS.join(', '))
    .argument('<command...>', 'the command and its arguments (put -- before it)')
    .description(`run a command on a lab host (a, b and mgmt see their own files), e.g. lockstep lab exec client -- wget -qO- http://${LAB_GUEST}/cgi-bin/cnt`)
    .option(...dirOpt)
    .action(async (host: string, command: string[], opts: { dir: string }) => {
      if (!(HOSTS as readonly string[]).includes(host)) throw new LockstepError(`"${host}" is not a lab host`, { hint: `hosts: ${HOSTS.join(', ')}` });
      runOnLabHost(await openLab(opts.dir), host as LabHost, command);
    });
}

/** Runs `command` on lab host `h` (a, b and mgmt in their own file system view), its output ours, its exit code ours. */
function runOnLabHost(l: DaemonVmLab, h: LabHost, command: string[]): void {
  const prefix = h === 'a' || h === 'b' || h === 'mgmt' ? l.lab.enter(h) : ['ip', 'netns', 'exec', l.hosts.ns[h]];
  const [cmd, ...rest] = [...prefix, ...command];
  const r = spawnSync(cmd!, rest, { stdio: 'inherit' });
  if (r.error) throw new LockstepError(`could not run ${command[0]} on ${h}: ${r.error.message}`);
  process.exitCode = r.status ?? 1;
}

/**
 * A new lab in `root` with VM "web" protected between a and b, left running
 * for later commands (lockstep lab status, the chaos verbs, the demo). On
 * failure nothing is left running.
 */
export async function labUp(root: string, o: { onStep?: (m: string) => void; onUpdate?: (m: string) => void } = {}): Promise<DaemonVmLab> {
  const l = await DaemonVmLab.create('ls', { root, onStep: o.onStep, onUpdate: o.onUpdate });
  try {
    o.onStep?.(`lockstep up -f ${l.vmFile} on the management host`);
    await l.up({ onLine: (line) => o.onUpdate?.(line.replace(/^[•✓]\s*/, '')) });
    return l;
  } catch (err) {
    await l.end();
    throw err;
  }
}
