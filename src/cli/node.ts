import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { Agent } from '../node/agent.js';
import { Witness, witnessKeyFor } from '../node/witness.js';
import { isEndpoint, nodeName } from '../config/schema.js';
import { print } from './output.js';
import { LockstepError } from '../util/errors.js';
import pino from 'pino';

/** Runs until SIGTERM or SIGINT, then `stop()` and exit. */
function untilSignal(stop: () => Promise<void>): void {
  const end = () => void stop().finally(() => process.exit(0));
  process.once('SIGTERM', end);
  process.once('SIGINT', end);
}

export function registerNodeCommands(program: Command): void {
  program
    .command('agent')
    .summary('run the node agent of one node (lockstep up starts them)')
    .description(
      'the per-node daemon: attaches to its node\'s QEMU over QMP, exchanges authenticated heartbeats with the peer ' +
        'agent, holds or asks for the witness lease, and runs failover by itself when its peer\'s VM dies. ' +
        'Logs JSON lines to stdout. lockstep up starts one per node; this command is for running them yourself.',
    )
    .requiredOption('-c, --config <file>', 'the pair\'s YAML config')
    .requiredOption('--node <name>', 'which node this is')
    .action(async (opts: { config: string; node: string }) => {
      const c = loadConfig(opts.config);
      const agent = new Agent(c, opts.node);
      await agent.start();
      untilSignal(() => agent.stop());
    });

  program
    .command('witness')
    .summary('run the witness that grants the writer lease')
    .description(
      'a third party that both nodes can reach: it grants one writer lease per VM at a time, so that when the nodes lose ' +
        'each other at most one of them carries the VM on. Run it on a third host; the agents find it at agents.witness.',
    )
    .requiredOption('-c, --config <file>', 'the pair\'s YAML config (for agents.secret and agents.witness)')
    .option('--listen <addr:port>', 'where to listen (default: agents.witness)')
    .option('--grace-ms <n>', 'grant nothing for this long after start, and no lease longer than that (default: 2 × agents.leaseMs; 0: no grace, for tests)')
    .action(async (opts: { config: string; listen?: string; graceMs?: string }) => {
      const c = loadConfig(opts.config);
      if (!c.agents) throw new LockstepError(`${c.file}: no agents section`, { hint: 'the witness shares agents.secret with the agents' });
      const listen = opts.listen ?? c.agents.witness;
      if (!listen) throw new LockstepError('no address to listen on', { hint: 'pass --listen ADDR:PORT or set agents.witness' });
      if (!isEndpoint(listen)) throw new LockstepError(`--listen ${listen}: expected ADDRESS:PORT (an IPv4 address, a port of 1-65535)`, { hint: 'e.g. --listen 10.0.3.3:7900' });
      const graceMs = opts.graceMs === undefined ? 2 * c.agents.leaseMs : Number(opts.graceMs);
      if (!Number.isSafeInteger(graceMs) || graceMs < 0 || graceMs > 600_000) throw new LockstepError(`--grace-ms ${opts.graceMs}: expected whole milliseconds from 0 to 600000`, { hint: 'at least the longest lease (2 × agents.leaseMs is the default)' });
      const [host, port] = listen.split(':');
      fs.mkdirSync(c.stateDir, { recursive: true, mode: 0o700 });
      const log = pino({ base: { role: 'witness' }, timestamp: pino.stdTimeFunctions.isoTime });
      const w = new Witness({
        secret: c.agents.secret,
        host: host!,
        port: Number(port),
        graceMs,
        stateFile: path.join(c.stateDir, 'witness.json'),
        log: (m) => log.info(m),
      });
      await w.start();
      untilSignal(() => w.stop());
    });

  program
    .command('witness-key')
    .summary("a VM's own key at the witness, for its VM file")
    .description(
      "Prints VM NAME's key at the witness (HMAC-SHA256 of the witness's secret and the VM's name): put it in the VM's " +
        'file as agents.witnessKey. Its agents then prove that key, not the witness\'s secret, and the witness lets them ' +
        'ask for that VM\'s lease only; so VMs that share a witness need not share a secret, and each VM\'s agents\' secret ' +
        '(which up makes when the file has none) and the data-plane key derived from it stay that VM\'s own. ' +
        'Run it where the witness\'s config is; the witness needs no restart.',
    )
    .argument('<name>', "the VM's name, as in its file")
    .requiredOption('-c, --config <file>', "the witness's config (its agents.secret is the witness's secret)")
    .option('--json', 'print { name, witnessKey }')
    .action((name: string, opts: { config: string; json?: boolean }) => {
      if (!nodeName.safeParse(name).success) throw new LockstepError(`"${name}" is not a VM name`, { hint: 'a short lower-case name (letters, digits, "-"), as the VM file\'s name' });
      const c = loadConfig(opts.config);
      if (!c.agents) throw new LockstepError(`${c.file}: no agents section`, { hint: "the witness's secret is its config's agents.secret" });
      const witnessKey = witnessKeyFor(c.agents.secret, name);
      print(opts.json, { name, witnessKey }, () => `agents:\n  witnessKey: ${witnessKey}   # VM ${name}'s key at the witness ${c.agents!.witness ?? ''}`.trimEnd());
    });
}
