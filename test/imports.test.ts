// One-way dependencies (docs/ARCHITECTURE.md "The rooms"): the model at the bottom, the
// families, services, loader and collector above it, the agent, the commands and the
// generators on top. A small walker over the TypeScript sources finds every import (type-only
// ones too: a cycle through types is what forced casts before) and fails on any cycle, and
// on a cast through `unknown`, which is how a cycle gets papered over.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../alerts/artifacts.js';

const ROOTS = ['agent', 'families', 'bpf', 'alerts', 'dashboards', 'deploy'];

function sources(dir: string, out: string[] = []): string[] {
  for (const e of fs.readdirSync(path.join(REPO_ROOT, dir), { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) {
      if (e.name !== 'build' && e.name !== 'node_modules') sources(p, out);
    } else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Relative module specifiers of static imports and re-exports (`import type` included) and
 * of dynamic imports with a literal specifier, resolved to repository paths. */
export function importsOf(file: string, text: string): string[] {
  const specs: string[] = [];
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  for (const m of code.matchAll(/(?:^|[;\s])(?:import|export)\s[^;'"]*?from\s*['"]([^'"]+)['"]/g)) specs.push(m[1]!);
  for (const m of code.matchAll(/(?:^|[;\s])import\s*['"]([^'"]+)['"]/g)) specs.push(m[1]!);
  for (const m of code.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) specs.push(m[1]!);
  return specs.filter((s) => s.startsWith('.')).map((s) => path.posix.normalize(path.posix.join(path.posix.dirname(file), s)).replace(/\.js$/, '.ts'));
}

/** Every cycle's members, each as a path a -> b -> ... -> a (Tarjan's strongly connected components). */
export function cycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(comp.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

function graphOf(files: readonly string[]): Map<string, string[]> {
  return new Map(files.map((f) => [f, importsOf(f, fs.readFileSync(path.join(REPO_ROOT, f), 'utf8'))]));
}

test('the walker sees static, type-only, re-exported and literal dynamic imports, and finds a cycle through types', (t) => {
  const text = [
    "import { a } from './a.js';",
    "import type { B } from '../b/b.js';",
    "export { c } from './c.js';",
    "export type { D } from './d.js';",
    "const e = await import('./e.js');",
    "import 'node:fs';",
    "// import { x } from './commented.js';",
  ].join('\n');
  t.deepEqual(importsOf('agent/x/y.ts', text), ['agent/x/a.ts', 'agent/b/b.ts', 'agent/x/c.ts', 'agent/x/d.ts', 'agent/x/e.ts']);
  const g = new Map([
    ['m.ts', ['c.ts']],
    ['c.ts', ['l.ts']],
    ['l.ts', ['m.ts', 'x.ts']],
    ['x.ts', []],
  ]);
  t.deepEqual(cycles(g), [['c.ts', 'l.ts', 'm.ts']]);
  t.deepEqual(
    cycles(
      new Map([
        ['a.ts', ['b.ts']],
        ['b.ts', []],
      ]),
    ),
    [],
  );
});

test(`no import cycle under ${ROOTS.join('/, ')}/ (type-only imports included)`, (t) => {
  const files = ROOTS.flatMap((d) => sources(d));
  t.true(files.length > 100, `${files.length} files`);
  const g = graphOf(files);
  t.true(
    [...g.values()].some((deps) => deps.includes('agent/model/family.ts')),
    'the walker resolves imports of the model',
  );
  t.deepEqual(cycles(g), [], 'import cycles (each listed as its members)');
});

test('the model imports nothing of the loader, the collector, the sources, the agent or the families', (t) => {
  const model = sources('agent/model');
  t.true(model.length >= 2);
  for (const f of model) {
    const bad = importsOf(f, fs.readFileSync(path.join(REPO_ROOT, f), 'utf8')).filter((d) =>
      /^(agent\/(loader|agent|catalog|families)\.ts|agent\/(aggregate\/collect|sources\/|services\/)|families\/)/.test(d),
    );
    t.deepEqual(bad, [], f);
  }
});

test('no cast through unknown (`as unknown as`) in the agent, the families and the generators', (t) => {
  const hits = ROOTS.flatMap((d) => sources(d)).filter((f) => /\bas unknown as\b/.test(fs.readFileSync(path.join(REPO_ROOT, f), 'utf8')));
  t.deepEqual(hits, []);
});
