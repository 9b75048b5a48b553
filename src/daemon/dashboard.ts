/**
 * The dashboard's files: plain HTML, CSS and JavaScript shipped in the
 * repository (src/daemon/dashboard/) and in the package, served by the daemon
 * as they are: no build step, nothing from another origin. Read once, at
 * their first request; only the files listed here are served.
 */
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../util/paths.js';

/** Where the files are, in the repository and in the installed package. */
export function dashboardDir(): string {
  return path.join(packageRoot(), 'src', 'daemon', 'dashboard');
}

const TYPES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
  'favicon.svg': 'image/svg+xml',
};

const cache = new Map<string, { body: string; contentType: string }>();

/** The dashboard file `name` and its content type; undefined for any other name. */
export function dashboardFile(name: string): { body: string; contentType: string } | undefined {
  const contentType = TYPES[name];
  if (!contentType) return undefined;
  let f = cache.get(name);
  if (!f) {
    f = { body: fs.readFileSync(path.join(dashboardDir(), name), 'utf8'), contentType };
    cache.set(name, f);
  }
  return f;
}

/** The files the dashboard is made of (the package must carry each). */
export const DASHBOARD_FILES = Object.keys(TYPES);
