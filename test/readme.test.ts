// The README stays true: every catalogued metric and every probe is documented.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ALL_METRICS } from '../agent/catalog.js';
import { FAMILIES } from '../agent/probes/index.js';
import { ROOT } from './helpers/agent.js';

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');

test('every catalog metric is in the README metrics table with its type and labels', (t) => {
  for (const m of ALL_METRICS) {
    const row = readme.split('\n').find((l) => l.startsWith(`| \`${m.name}\` |`));
    t.truthy(row, `${m.name} missing from README`);
    const cells = row!.split('|').map((c) => c.trim());
    t.is(cells[2], m.type, m.name);
    t.is(cells[3], m.labels.join(', ') || '—', m.name);
  }
});

test('every probe and each of its candidate targets is in the README probes table', (t) => {
  for (const p of FAMILIES.flatMap((f) => f.probes)) {
    const row = readme.split('\n').find((l) => l.startsWith(`| \`${p.name}\` |`));
    t.truthy(row, `${p.name} missing from README`);
    for (const c of p.candidates) t.true(row!.includes(`\`${c.attach}\` ${c.target}`), `${p.name}: ${c.attach} ${c.target}`);
  }
});

test('the README gives the two commands', (t) => {
  t.regex(readme, /^npm start\b/m);
  t.regex(readme, /^npm test\b/m);
});
