/**
 * lockstep lab up|down and the chaos verbs: a lab of separate hosts (network
 * namespaces) with a protected pair, a witness and a client, kept between
 * commands in a directory (default .lockstep/lab).
 */
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { Command } from 'commander';
import { HostsLab } from '../lab/hosts-scenario.js';
import { LINKS, type LinkName } from '../lab/hosts.js';
import { loadConfig } from '../config/load.js';
import { pairStatus } from '../pair/status.js';
import { readState } from '../pair/state.js';
import { isOurQemu } from '../qemu/process.js';
import { pidRunning } from '../util/proc.js';
import { createProgress } from '../util/progress.js';
import { LockstepError } from '../util/errors.js';
import { print } from './output.js';

const DEFAULT_DIR = path.join('.lockstep', 'lab');
const GUEST = '10.0.2.15';
const HOSTS = ['a', 'b', 'witness', 'client', 'switch'] as const;

function openLab(dir: string): HostsLab {
  const lab = HostsLab.open(path.resolve(dir));
  if (!lab) throw new LockstepError(`no lab is up in ${path.resolve(dir)}`, { hint: 'start one with: lockstep lab up' + (dir === DEFAULT_DIR ? '' : ` --dir ${dir}`) });
  return lab;
}

/** a, b, primary or secondary → the node's name in the lab's current pair. */
async function nodeOf(lab: HostsLab, who: string): Promise<{ node: string; cfg: ReturnType<typeof loadConfig> }> {
  const cfg = loadConfig(lab.currentConfig);
  if (who === 'a' || who === 'b') return { node: who, cfg };
  if (who !== 'primary' && who !== 'secondary') throw new LockstepError(`"${who}" is not a node`, { hint: 'say a, b, primary or secondary' });
  const st = await pairStatus(cfg);
  const n = st.nodes.find((x) => x.role === who && x.alive);
  if (!n) throw new LockstepError(`the lab's pair has no running ${who}`, { hint: 'see lockstep lab status' });
  return { node: n.name, cfg };
}

function labSummary(lab: HostsLab): string {
  const h = lab.hosts;
  const cfg = path.relative(process.cwd(), lab.currentConfig) || lab.currentConfig;
  return [
    'hosts (network namespaces):',
    `  a        ${h.ns.a.padEnd(12)} replication ${h.addr.replication.a}, heartbeat ${h.addr.heartbeat.a}, mgmt ${h.addr.mgmt.a}`,
    `  b        ${h.ns.b.padEnd(12)} replication ${h.addr.replication.b}, heartbeat ${h.addr.heartbeat.b}, mgmt ${h.addr.mgmt.b}`,
    `  witness  ${h.ns.witness.padEnd(12)} ${h.addr.mgmt.witness}`,
    `  client   ${h.ns.client.padEnd(12)} ${h.addr.client} on the guest LAN; the guest is ${GUEST}`,
    `pair config: ${cfg}`,
    '',
    'try:',
    `  lockstep lab exec client -- wget -qO- http://${GUEST}/cgi-bin/cnt     the guest's disk counter`,
    `  lockstep status -c ${cfg}`,
    '  lockstep lab kill primary              kill -9 its QEMU (--agent: its agent; --freeze: SIGSTOP)',
    '  lockstep lab cut heartbeat             pull a cable (also: replication, witness-a, lan-b, ...); lockstep lab heal',
    '  lockstep lab isolate a                 cut every cable of a host',
    '  lockstep lab down',
  ].join('\n');
}

export function registerLabHostsCommands(lab: Command): void {
  const dirOpt = ['--dir <dir>', 'where the lab keeps its configs, disks and logs', DEFAULT_DIR] as const;

  lab
    .command('up')
    .description(
      'create a lab of separate hosts on this machine (network namespaces: node a, node b, a witness, a client and\n' +
        'a switch; replication, heartbeat, management and the guest LAN each on their own cable) and start a\n' +
        'protected pair of demo VMs in it, with an agent in each node\'s host. Needs root. Stop it with lockstep lab down.',
    )
    .option(...dirOpt)
    .option('--json', 'print the lab as JSON')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const root = path.resolve(opts.dir);
      const progress = createProgress(process.stderr, { quiet: opts.json === true });
      const { lab: l, pair } = await HostsLab.up(root, { onStep: (m) => progress.step(m), onUpdate: (m) => progress.update(m) });
      progress.done(`protected pair up in the lab (${pair.state.runtime.accel.toUpperCase()})`);
      print(opts.json, { dir: root, hosts: l.hosts.ns, addresses: l.hosts.addr, guest: GUEST, config: l.currentConfig }, () => labSummary(l));
    });

  lab
    .command('down')
    .description('stop the lab: its pairs (cleanly, secondary first), its agents and witness, and remove its hosts. Logs, configs and disks stay in the lab directory.')
    .option(...dirOpt)
    .option('--json', 'print the result as JSON')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const root = path.resolve(opts.dir);
      const l = HostsLab.open(root);
      if (l) await l.remove();
      print(opts.json, { dir: root, removed: l !== undefined }, () => (l ? `lab in ${root} removed (logs kept there)` : `no lab was up in ${root}`));
    });

  lab
    .command('status')
    .description("the lab's hosts and the state of its pair")
    .option(...dirOpt)
    .option('--json', 'print as JSON')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const l = openLab(opts.dir);
      const st = await pairStatus(loadConfig(l.currentConfig));
      print(opts.json, { dir: l.root, hosts: l.hosts.ns, pair: st }, () =>
        labSummary(l) + '\n\n' + `pair ${st.name}: ${st.protected ? 'PROTECTED' : st.running ? 'running, NOT protected' : 'not running'}` +
        st.nodes.map((n) => `\n  ${n.name}: ${n.role}, ${n.alive ? `pid ${n.pid}, ${n.runState ?? n.error}` : 'QEMU not running'}${n.agent ? `, agent ${n.agent.role}` : ''}`).join('') +
        (st.lastFailover ? `\n  last failover: ${st.lastFailover.from} → ${st.lastFailover.to} (${st.lastFailover.reason})` : ''),
      );
    });

  lab
    .command('kill')
    .argument('<node>', 'a, b, primary or secondary')
    .description("chaos: kill -9 a node's QEMU (default), its agent (--agent), or freeze its QEMU with SIGSTOP (--freeze)")
    .option('--agent', "kill the node's agent instead of its QEMU")
    .option('--freeze', 'SIGSTOP the QEMU instead of killing it (its agent\'s watchdog is expected to end it)')
    .option(...dirOpt)
    .option('--json', 'print what was done as JSON')
    .action(async (who: string, opts: { dir: string; agent?: boolean; freeze?: boolean; json?: boolean }) => {
      const l = openLab(opts.dir);
      const { node, cfg } = await nodeOf(l, who);
      const s = readState(cfg.stateDir);
      const n = s?.nodes.find((x) => x.name === node);
      let pid: number | undefined;
      let what: string;
      if (opts.agent) {
        pid = s?.agents?.[node];
        if (!pid || !pidRunning(pid)) throw new LockstepError(`node ${node}'s agent is not running`);
        what = `agent of ${node}`;
      } else {
        if (!n || !isOurQemu(n.pid, n.qmpSocket)) throw new LockstepError(`node ${node}'s QEMU is not running`);
        pid = n.pid;
        what = `QEMU of ${node}`;
      }
      const signal = opts.freeze ? 'SIGSTOP' : 'SIGKILL';
      process.kill(pid, signal);
      print(opts.json, { node, pid, signal, agent: opts.agent === true }, () => `${signal} sent to the ${what} (pid ${pid})`);
    });

  lab
    .command('cut')
    .argument('<link...>', `cables to pull: ${LINKS.join(', ')}`)
    .description('chaos: take cables down (packets stop without a reset, as when a cable is pulled); lockstep lab heal reconnects them')
    .option(...dirOpt)
    .action(async (links: string[], opts: { dir: string }) => {
      const bad = links.filter((x) => !(LINKS as readonly string[]).includes(x));
      if (bad.length) throw new LockstepError(`unknown link ${bad.join(', ')}`, { hint: `links: ${LINKS.join(', ')}` });
      const l = openLab(opts.dir);
      for (const x of links) await l.hosts.cut(x as LinkName);
      process.stdout.write(`cut: ${links.join(', ')}\n`);
    });

  lab
    .command('isolate')
    .argument('<node>', 'a or b')
    .description("chaos: cut every cable of a node's host (replication, heartbeat, witness, LAN) while its VM runs on")
    .option(...dirOpt)
    .action(async (node: string, opts: { dir: string }) => {
      if (node !== 'a' && node !== 'b') throw new LockstepError(`"${node}" is not a lab node`, { hint: 'say a or b' });
      await openLab(opts.dir).hosts.isolate(node);
      process.stdout.write(`host ${node} isolated; lockstep lab heal reconnects it\n`);
    });

  lab
    .command('heal')
    .description('reconnect every cable of the lab')
    .option(...dirOpt)
    .action(async (opts: { dir: string }) => {
      await openLab(opts.dir).hosts.heal();
      process.stdout.write('every cable connected\n');
    });

  lab
    .command('exec')
    .argument('<host>', HOSTS.join(', '))
    .argument('<command...>', 'the command and its arguments (put -- before it)')
    .description('run a command on a lab host, e.g. lockstep lab exec client -- wget -qO- http://10.0.2.15/cgi-bin/cnt')
    .option(...dirOpt)
    .action((host: string, command: string[], opts: { dir: string }) => {
      if (!(HOSTS as readonly string[]).includes(host)) throw new LockstepError(`"${host}" is not a lab host`, { hint: `hosts: ${HOSTS.join(', ')}` });
      const l = openLab(opts.dir);
      const r = spawnSync('ip', ['netns', 'exec', l.hosts.ns[host as (typeof HOSTS)[number]], ...command], { stdio: 'inherit' });
      if (r.error) throw new LockstepError(`could not run ${command[0]} on ${host}: ${r.error.message}`);
      process.exitCode = r.status ?? 1;
    });
}
