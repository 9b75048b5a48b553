/**
 * Reading the daemons' metrics in tests: a scrape over a daemon's local
 * socket (as root on its host), one series' value from the exposition text,
 * and `promtool check metrics` (Debian's prometheus package) on it.
 */
import { spawnSync } from 'node:child_process';
import { LockstepError } from '../../src/util/errors.js';
import { hasLabels, samples } from '../../src/lab/scrape.js';

export { getOverSocket } from '../../src/lab/scrape.js';

/** The value of series `name{labels}` (the labels given must match, others may be there), undefined when absent. */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  return samples(text).find((s) => s.name === name && hasLabels(s, labels))?.value;
}

/** The sum of every series `name` whose labels include `labels`. */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  return samples(text)
    .filter((s) => s.name === name && hasLabels(s, labels))
    .reduce((sum, s) => sum + s.value, 0);
}

/** promtool's verdict on an exposition text: its exit code and what it said. */
export function promtoolCheckMetrics(text: string): { code: number; out: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw new LockstepError(`promtool cannot run: ${r.error.message}`, { hint: "scripts/setup.sh installs it (Debian's prometheus package)" });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}`.trim() };
}
