/**
 * The layers of src/: a lower layer never imports a higher one, and no
 * production layer imports the lab, the simulator or the CLI (a daemon on a
 * real server must not carry code that builds QEMU or downloads a guest).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../../src/util/paths.js';

/** Production layers, lowest first; qmp and config are siblings (neither imports the other). */
const RANK: Record<string, number> = { util: 0, qmp: 1, config: 1, qemu: 2, colo: 3, pair: 4, node: 5, daemon: 6, cli: 7 };
/** Above every production layer, never imported by one. */
const ABOVE = new Set(['lab', 'sim', 'cli']);

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true }).filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => path.join(e.parentPath, e.name));
}

test('no production layer imports a higher one, the lab, the simulator or the CLI', () => {
  const src = path.join(packageRoot(), 'src');
  const wrong: string[] = [];
  let checked = 0;
  for (const file of sources(src)) {
    const layer = path.relative(src, file).split(path.sep)[0]!;
    if (!(layer in RANK) || layer === 'cli') continue;
    for (const m of fs.readFileSync(file, 'utf8').matchAll(/^(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/gms)) {
      const target = path.relative(src, path.resolve(path.dirname(file), m[1]!)).split(path.sep)[0]!;
      checked++;
      if (target === layer) continue;
      if (ABOVE.has(target) || !(target in RANK) || RANK[target]! >= RANK[layer]!) wrong.push(`${path.relative(src, file)} imports ${m[1]} (${layer} → ${target})`);
    }
  }
  assert.ok(checked > 100, `only ${checked} imports seen: the pattern no longer matches the sources`);
  assert.deepEqual(wrong, []);
});
