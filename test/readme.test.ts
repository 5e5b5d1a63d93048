// The README stays a new user's page: small, with the two commands, a configuration example
// that is a valid config naming every key, every command, and links that resolve. The
// reference (metrics, probes, kernel matrix, cost, trace format) is in docs/ (test/docs.test.ts).
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import YAML from 'yaml';
import { z } from 'zod';
import { configSchema } from '../agent/config.js';
import { brokenLinks } from './helpers/markdown.js';
import { ROOT } from './helpers/agent.js';

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');

function section(title: string): string {
  const s = readme.indexOf(`\n## ${title}\n`);
  if (s < 0) return '';
  const e = readme.indexOf('\n## ', s + 1);
  return readme.slice(s, e < 0 ? undefined : e);
}

test('the README is at most 30 KB', (t) => {
  const bytes = Buffer.byteLength(readme);
  t.true(bytes <= 30 * 1024, `README.md is ${bytes} bytes; move reference material into docs/`);
});

test('the README gives the two commands, in a shell block, as the first thing to run', (t) => {
  const block = /## Two commands\n[\s\S]*?```sh\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
  t.regex(block, /^npm start\b/m);
  t.regex(block, /^npm test\b/m);
  // And they are what package.json runs: setup, then the agent / the suite.
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  t.regex(pkg.scripts.start!, /^bash scripts\/setup\.sh && node dist\/agent\/cli\.js run/);
  t.regex(pkg.scripts.test!, /^bash scripts\/setup\.sh && /);
  t.regex(pkg.scripts.test!, /\bava\b/);
});

test('the README covers install, run, configure and troubleshoot', (t) => {
  for (const s of ['Two commands', 'Running it', 'Configuration', 'Troubleshooting', 'Deploying on Kubernetes']) {
    t.true(section(s).length > 200, `README section "${s}" missing or empty`);
  }
});

/** Every key path of a zod object schema, two levels deep (records and arrays are leaves). */
function keyPaths(schema: z.ZodTypeAny, prefix = '', depth = 0): string[] {
  let s: z.ZodTypeAny = schema;
  while (s instanceof z.ZodDefault || s instanceof z.ZodOptional || s instanceof z.ZodEffects) {
    s = s instanceof z.ZodEffects ? s.innerType() : (s._def as { innerType: z.ZodTypeAny }).innerType;
  }
  if (!(s instanceof z.ZodObject) || depth > 1) return prefix ? [prefix] : [];
  const out = prefix ? [prefix] : [];
  for (const [k, v] of Object.entries(s.shape as Record<string, z.ZodTypeAny>)) out.push(...keyPaths(v, prefix ? `${prefix}.${k}` : k, depth + 1));
  return out;
}

function yamlPaths(v: unknown, prefix = '', depth = 0): string[] {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || depth > 1) return prefix ? [prefix] : [];
  const out = prefix ? [prefix] : [];
  for (const [k, x] of Object.entries(v)) out.push(...yamlPaths(x, prefix ? `${prefix}.${k}` : k, depth + 1));
  return out;
}

test('the README configuration example is a valid config and names every key of the schema', (t) => {
  const block = /## Configuration\n[\s\S]*?```yaml\n([\s\S]*?)```/.exec(readme)?.[1];
  t.truthy(block, 'no yaml block in "Configuration"');
  const example: unknown = YAML.parse(block!);
  const parsed = configSchema.safeParse(example);
  t.true(parsed.success, parsed.success ? '' : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  const have = new Set(yamlPaths(example));
  const missing = keyPaths(configSchema).filter((k) => !have.has(k));
  t.deepEqual(missing, [], 'config keys the README example does not show');
});

test('the README usage block lists every command the CLI has', (t) => {
  const help = spawnSync(process.execPath, [join(ROOT, 'dist/agent/cli.js'), '--help'], { encoding: 'utf8' });
  const commands = /usage: hvwatch \[([a-z|]+)\]/.exec(help.stdout + help.stderr)?.[1]?.split('|') ?? [];
  t.true(commands.length >= 6, `could not read the commands from hvwatch --help: ${help.stdout}${help.stderr}`);
  const usage = section('Running it');
  for (const c of commands) t.regex(usage, new RegExp(`^bin/hvwatch ${c}\\b`, 'm'), `README "Running it" has no usage line for ${c}`);
});

test('the README opening names every probe family as landed, none as still to come', (t) => {
  const opening = readme.slice(0, readme.indexOf('\n## '));
  t.notRegex(opening, /still to come|not yet|planned/i);
  for (const f of [/memory-cgroup writeback/, /\bKVM\b/, /introspection \(KVMI\)/i, /interrupt injection/i]) t.regex(opening, f);
});

test('every relative link of the README resolves (file and, for .md, the #section)', (t) => {
  t.deepEqual(brokenLinks('README.md'), []);
});

test('every README "Section" and docs/<page>.md "Section" a source file cites exists', (t) => {
  const files = spawnSync('git', ['ls-files', '*.ts', '*.c', '*.h', '*.sh', '*.yaml', '*.yml'], { cwd: ROOT, encoding: 'utf8' })
    .stdout.split('\n')
    .filter((f) => f && !f.startsWith('bpf/include/') && f !== 'test/readme.test.ts');
  t.true(files.length > 50, 'git ls-files found the sources');
  const headings = (text: string) => new Set([...text.matchAll(/^#{2,4} (.+)$/gm)].map((m) => m[1]!.trim()));
  const pages = new Map<string, Set<string>>();
  const bad: string[] = [];
  for (const f of files) {
    const text = readFileSync(join(ROOT, f), 'utf8');
    for (const m of text.matchAll(/(^|[^/\w])(README|docs\/[\w-]+\.md) "([^"]+)"/g)) {
      const page = m[2] === 'README' ? 'README.md' : m[2]!;
      if (!pages.has(page)) pages.set(page, headings(readFileSync(join(ROOT, page), 'utf8')));
      const have = pages.get(page)!;
      // A citation names a heading or the start of one ("Histograms" for "Histograms: native and classic").
      if (![...have].some((h) => h === m[3] || h.startsWith(`${m[3]}:`) || h.startsWith(`${m[3]} `))) bad.push(`${f}: ${page} "${m[3]}"`);
    }
  }
  t.deepEqual(bad, []);
});
