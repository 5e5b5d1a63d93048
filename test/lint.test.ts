// Lint and format run in CI through the suite: ESLint with typescript-eslint
// (eslint.config.js), Prettier for TypeScript (.prettierrc.json) and clang-format for
// bpf/src and families/*/ (.clang-format). `npm run lint` runs the same three; `npm run format` rewrites
// what the two format checks would refuse. Each check is also shown to bite on a bad input,
// so a config that silently matches nothing cannot pass.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './helpers/agent.js';

const bin = (name: string) => join(ROOT, 'node_modules/.bin', name);
const run = (cmd: string, args: string[], input?: string) => spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', input, maxBuffer: 64 << 20 });

test('eslint (typescript-eslint recommended) finds no problem in the TypeScript sources', (t) => {
  const r = run(bin('eslint'), ['.', '-f', 'json']);
  const files = JSON.parse(r.stdout) as { filePath: string; messages: { ruleId: string; line: number; message: string }[] }[];
  t.true(files.length > 100, `eslint linted ${files.length} files`);
  t.true(files.some((f) => f.filePath.endsWith('agent/agent.ts')) && files.some((f) => f.filePath.endsWith('test/lint.test.ts')));
  const problems = files.flatMap((f) => f.messages.map((m) => `${f.filePath.slice(ROOT.length)}:${m.line} ${m.ruleId}: ${m.message}`));
  t.deepEqual(problems, [], 'run `npx eslint .`');
});

test('eslint applies the typescript-eslint rules (an unused variable and an explicit any are refused)', (t) => {
  const r = run(bin('eslint'), ['--stdin', '--stdin-filename', 'agent/lint-probe.ts', '-f', 'json'], 'const unused = 1;\nexport const x: any = 2;\n');
  const rules = (JSON.parse(r.stdout) as { messages: { ruleId: string }[] }[])[0]!.messages.map((m) => m.ruleId).sort();
  t.deepEqual(rules, ['@typescript-eslint/no-explicit-any', '@typescript-eslint/no-unused-vars']);
});

test('prettier: every TypeScript file is formatted (npm run format rewrites them)', (t) => {
  const r = run(bin('prettier'), ['--list-different', '**/*.ts']);
  t.is(r.stderr.trim(), '');
  t.deepEqual(r.stdout.split('\n').filter(Boolean), [], 'run `npm run format`');
  const bad = run(bin('prettier'), ['--stdin-filepath', 'agent/x.ts'], 'const a = {b:1,\n      c:"2"}\n');
  t.is(bad.stdout, "const a = { b: 1, c: '2' };\n", 'the repository config (single quotes, semicolons) is the one applied');
});

test('clang-format: bpf/src/*.c and *.h and the BPF sources of each family folder follow .clang-format (npm run format rewrites them)', (t) => {
  const which = run('clang-format', ['--version']);
  t.is(which.status, 0, 'clang-format is missing: scripts/setup.sh installs it (scripts/debian-packages.txt)');
  const cSources = (dir: string): string[] =>
    readdirSync(join(ROOT, dir))
      .filter((f) => /\.(c|h)$/.test(f))
      .map((f) => `${dir}/${f}`);
  const families = readdirSync(join(ROOT, 'families'), { withFileTypes: true }).filter((d) => d.isDirectory());
  const files = [...cSources('bpf/src'), ...families.flatMap((d) => cSources(`families/${d.name}`))];
  t.true(files.length >= 12);
  t.true(
    families.every((d) => files.includes(`families/${d.name}/${d.name}.bpf.c`)),
    'every family folder has its <name>.bpf.c',
  );
  const r = run('clang-format', ['--dry-run', '-Werror', ...files]);
  t.is(r.status, 0, `run \`npm run format\`:\n${r.stderr.split('\n').slice(0, 30).join('\n')}`);
  const bad = run('clang-format', ['--assume-filename', join(ROOT, 'bpf/src/x.bpf.c')], 'int f(void) {\n  if (a) { b(); }\n  return 0;\n}\n');
  t.is(bad.stdout, 'int f(void)\n{\n\tif (a) {\n\t\tb();\n\t}\n\treturn 0;\n}\n', 'the repository .clang-format (Linux braces, tabs) is the one applied');
});
