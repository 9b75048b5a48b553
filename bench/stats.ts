import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../src/util/paths.js';

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export interface Summary {
  n: number;
  median: number;
  p99: number;
  max: number;
}

export function summarize(values: number[]): Summary {
  const r = (x: number) => Math.round(x * 10) / 10;
  return { n: values.length, median: r(percentile(values, 50)), p99: r(percentile(values, 99)), max: r(Math.max(...values)) };
}

/** Prints rows as an aligned table. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n');
}

/** Writes a benchmark's figures to bench/results/NAME.json; returns the file. */
export function writeResult(name: string, result: unknown): string {
  const dir = path.join(packageRoot(), 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  return file;
}
