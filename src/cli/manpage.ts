/**
 * lockstep(1): the manual page, made from the CLI's own commands, so it says
 * what --help says, in the form `man lockstep` shows: every command with its
 * usage, what it does and its options, then exit status, files and
 * environment.
 */
import type { Command } from 'commander';

/** Text made safe for roff: backslashes, and a leading dot or quote that would read as a request. */
export function roffEscape(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .split('\n')
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join('\n');
}

/** Paragraphs of a description: blank lines split them; lines indented by two spaces stay as they are (examples). */
function paragraphs(text: string): string[] {
  const out: string[] = [];
  for (const block of text.split(/\n\s*\n/)) {
    const lines = block.split('\n');
    if (lines.some((l) => /^\s{2,}\S/.test(l))) out.push(`.nf\n${roffEscape(block)}\n.fi`);
    else out.push(roffEscape(lines.join(' ').trim()));
  }
  return out;
}

function commandPath(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x; x = x.parent) names.unshift(x.name());
  return names.join(' ');
}

function walk(c: Command): Command[] {
  return c.commands.flatMap((s) => [s, ...walk(s)]).sort((a, b) => commandPath(a).localeCompare(commandPath(b)));
}

export function manPage(program: Command, o: { version: string; date: Date }): string {
  const help = program.createHelp();
  const out: string[] = [
    `.TH LOCKSTEP 1 "${o.date.toISOString().slice(0, 10)}" "lockstep ${roffEscape(o.version)}" "lockstep manual"`,
    '.SH NAME',
    'lockstep \\- non\\-stop virtual machines on QEMU COLO',
    '.SH SYNOPSIS',
    '.B lockstep',
    '.I command',
    '.RI [ options ]',
    '.br',
    '.B lockstep',
    '.I command',
    '.B \\-\\-help',
    '.SH DESCRIPTION',
    ...paragraphs(program.description()).flatMap((p, i) => (i === 0 ? [p] : ['.PP', p])),
    '.SH COMMANDS',
  ];
  for (const c of walk(program)) {
    if (c.commands.length && !c.options.length && c.registeredArguments.length === 0 && !c.description()) continue;
    const usage = `${commandPath(c)} ${c.usage()}`.trim();
    out.push(`.SS "${roffEscape(usage)}"`);
    const desc = c.description() || c.summary();
    if (desc) out.push(...paragraphs(desc).flatMap((p, i) => (i === 0 ? [p] : ['.PP', p])));
    for (const a of help.visibleArguments(c)) {
      out.push('.TP', `.I ${roffEscape(help.argumentTerm(a))}`, roffEscape(help.argumentDescription(a)));
    }
    for (const opt of help.visibleOptions(c)) {
      if (opt.long === '--help') continue;
      out.push('.TP', `.B ${roffEscape(help.optionTerm(opt))}`, roffEscape(help.optionDescription(opt)));
    }
  }
  out.push(
    '.SH EXIT STATUS',
    '.TP',
    '.B 0',
    'success',
    '.TP',
    '.B 1',
    'an error: what failed and what to do are on standard error (a host that cannot be asked, bad input, a refused request)',
    '.TP',
    '.B 3',
    '.B status:',
    'a VM is not protected',
    '.SH FILES',
    '.TP',
    '.I /etc/lockstep/host.yaml',
    "this host's name, addresses, API and the hosts it trusts (written by \\fBlockstep host init\\fR)",
    '.TP',
    '.I /etc/lockstep/tls/',
    "this host's key (0600) and certificate; the key never leaves the host",
    '.TP',
    '.I /var/lib/lockstep/',
    "the daemon's state: each VM's definition, disk epochs, replicas (0700); kept when the package is purged",
    '.TP',
    '.I /run/lockstep/api.sock',
    "the daemon's local API, for root",
    '.TP',
    '.I /usr/lib/systemd/system/lockstepd.service',
    'the daemon; installed disabled: \\fBsystemctl enable \\-\\-now lockstepd\\fR after \\fBlockstep host init\\fR',
    '.SH ENVIRONMENT',
    '.TP',
    '.B LOCKSTEP_QEMU',
    'the QEMU binary to run, unless a VM file or the host file names one',
    '.TP',
    '.B LOCKSTEP_CACHE',
    "where the lab's builds (QEMU, the demo guest) and probe results are kept (default ~/.cache/lockstep)",
    '.SH SEE ALSO',
    '.BR qemu\\-system\\-x86_64 (1),',
    '.BR systemctl (1);',
    'the README in /usr/share/doc/lockstep/',
    '',
  );
  return out.join('\n');
}
