/**
 * A holder of one VM's witness key trying to reach another VM's records (the
 * lab's neighbour), `node hostile-witness.js SPEC-JSON`: with VM `ownVm`'s
 * key (its lease is the only one its links may name), it records epoch
 * `forgedGen` under `victimRun` (the other VM's run, learned), asks for the
 * other VM's lease, then pushes `junkRuns` runs of its own; prints one JSON
 * line with every answer's gist. What must hold is checked by the test: the
 * other VM's nodes never become stale, and its lease is never granted to it.
 */
import { WitnessClient, witnessClientName } from '../node/witness.js';
import type { Epoch } from '../pair/epoch.js';

interface Spec {
  host: string;
  port: number;
  ownVm: string;
  key: string;
  victimVm: string;
  victimRun: string;
  forgedGen: number;
  junkRuns: number;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as Spec;
  const client = (node: string, lease: string) => new WitnessClient({ name: witnessClientName(spec.ownVm, node), secret: spec.key, host: spec.host, port: spec.port, lease });
  const x1 = client('x1', spec.ownVm);
  const x2 = client('x2', spec.ownVm);
  const out: Record<string, unknown> = {};
  const E = (run: string, gen: number, by: string): Epoch => ({ run, gen, by });
  try {
    // The victim's run, under our own lease: the other node speaks, then we record 1001 for it.
    await x2.query(spec.victimRun, 2000, E(spec.victimRun, spec.forgedGen - 1, 'x1'));
    const forged = await x1.acquire(1000, E(spec.victimRun, spec.forgedGen - 1, 'x1'), E(spec.victimRun, spec.forgedGen, 'x1'), 2000);
    out.forged = { granted: forged.granted, newest: forged.newest, reason: forged.reason ?? null };
    await x1.release(2000);
    // The victim's lease, with our key: the link proved our VM's key only.
    const cross = client('x1', spec.victimVm);
    try {
      const r = await cross.acquire(1000, E(spec.victimRun, spec.forgedGen, 'x1'), null, 2000);
      out.victimLease = { granted: r.granted, reason: r.reason ?? null };
    } catch (err) {
      out.victimLease = { error: String(err) };
    } finally {
      cross.close();
    }
    // Runs of our own, many: the victim's record must not go.
    let granted = 0;
    const t0 = performance.now();
    for (let i = 0; i < spec.junkRuns; i++) {
      const run = `junk-${i}-${process.pid}`;
      await x2.query(run, 2000, E(run, 1, 'up'));
      const r = await x1.acquire(1000, E(run, 1, 'up'), null, 2000);
      if (r.granted) granted++;
    }
    await x1.release(2000);
    out.junk = { runs: spec.junkRuns, granted, ms: Math.round(performance.now() - t0) };
  } finally {
    x1.close();
    x2.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err: unknown) => {
  process.stdout.write(JSON.stringify({ error: String(err) }) + '\n');
  process.exit(1);
});
