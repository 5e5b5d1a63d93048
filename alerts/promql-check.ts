// A small PromQL tokenizer and the catalog check built on it: every metric an expression
// names must be one the agent exports (agent/catalog.ts; a histogram through its native
// series, without `le`, or its classic _bucket/_sum/_count ones), a recording rule, or Prometheus' own `up`; every label it
// matches on or aggregates by must be one those metrics carry, or a target label. Grafana's
// template syntax ($var, ${var}, label_values(...)) is understood, so dashboard queries are
// checked with the same code.
import { parse as parseYaml } from 'yaml';
import { ALL_METRICS, type MetricDef } from '../agent/catalog.js';
import { TARGET_LABELS } from './promql.js';

export type TokenKind = 'ident' | 'string' | 'number' | 'duration' | 'var' | 'op' | 'punct';
export interface Token {
  kind: TokenKind;
  text: string;
  pos: number;
}

// A leading colon is legal in a metric name but never used here, and would swallow a subquery step ([5m:1m]).
const IDENT = /[a-zA-Z_][a-zA-Z0-9_:]*/y;
const NUMBER = /(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)/y;
const DURATION = /(?:\d+(?:ms|[smhdwy]))+/y;
const VAR = /\$(?:\{[^}]+\}|[a-zA-Z_][a-zA-Z0-9_]*)|\[\[[a-zA-Z_][a-zA-Z0-9_]*\]\]/y;
const OPS = ['=~', '!~', '!=', '==', '<=', '>=', '=', '<', '>', '+', '-', '*', '/', '%', '^', '@'];

export function tokenize(src: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  const at = (re: RegExp): string | undefined => {
    re.lastIndex = i;
    return re.exec(src)?.[0];
  };
  while (i < src.length) {
    const c = src[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === '#') {
      while (i < src.length && src[i] !== '\n') i++;
      continue;
    }
    if (c === '"' || c === "'" || c === '`') {
      let j = i + 1;
      while (j < src.length && src[j] !== c) j += src[j] === '\\' && c !== '`' ? 2 : 1;
      if (j >= src.length) throw new Error(`unterminated string at ${i}`);
      out.push({ kind: 'string', text: src.slice(i, j + 1), pos: i });
      i = j + 1;
      continue;
    }
    let m: string | undefined;
    if ((m = at(VAR))) {
      out.push({ kind: 'var', text: m, pos: i });
      i += m.length;
      continue;
    }
    if ((m = at(DURATION))) {
      out.push({ kind: 'duration', text: m, pos: i });
      i += m.length;
      continue;
    }
    if ((m = at(NUMBER))) {
      out.push({ kind: 'number', text: m, pos: i });
      i += m.length;
      continue;
    }
    if ((m = at(IDENT))) {
      out.push({ kind: 'ident', text: m, pos: i });
      i += m.length;
      continue;
    }
    const op = OPS.find((o) => src.startsWith(o, i));
    if (op) {
      out.push({ kind: 'op', text: op, pos: i });
      i += op.length;
      continue;
    }
    if ('(){}[],:'.includes(c)) {
      out.push({ kind: 'punct', text: c, pos: i });
      i++;
      continue;
    }
    throw new Error(`unexpected ${JSON.stringify(c)} at ${i}`);
  }
  return out;
}

const AGGREGATORS = new Set(['sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile']);
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'atan2', 'inf', 'nan']);
const LABEL_LIST = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
/** Prometheus' own series for every target. */
const BUILTIN: Readonly<Record<string, readonly string[]>> = { up: [], scrape_duration_seconds: [], scrape_samples_scraped: [] };

/** A series name and the labels it carries (target labels included). */
interface Known {
  labels: ReadonlySet<string>;
}

export interface CheckContext {
  /** Recording rules: name -> labels of the recorded series. */
  recorded?: ReadonlyMap<string, readonly string[]>;
  metrics?: readonly MetricDef[];
}

function seriesTable(ctx: CheckContext): Map<string, Known> {
  const t = new Map<string, Known>();
  const add = (name: string, labels: readonly string[]): void => void t.set(name, { labels: new Set([...labels, ...TARGET_LABELS]) });
  for (const d of ctx.metrics ?? ALL_METRICS) {
    if (d.type === 'histogram') {
      add(d.name, d.labels); // native histograms (protobuf scrapes)
      add(`${d.name}_bucket`, [...d.labels, 'le']);
      add(`${d.name}_sum`, d.labels);
      add(`${d.name}_count`, d.labels);
    } else add(d.name, d.labels);
  }
  for (const [n, l] of Object.entries(BUILTIN)) add(n, l);
  for (const [n, l] of ctx.recorded ?? []) add(n, l);
  return t;
}

function closing(tokens: Token[], open: number): number {
  const o = tokens[open]!.text;
  const c = o === '(' ? ')' : o === '{' ? '}' : ']';
  let depth = 0;
  for (let i = open; i < tokens.length; i++) {
    if (tokens[i]!.kind !== 'punct') continue;
    if (tokens[i]!.text === o) depth++;
    else if (tokens[i]!.text === c && --depth === 0) return i;
  }
  throw new Error(`unbalanced ${o} at ${tokens[open]!.pos}`);
}

const unquote = (s: string): string =>
  s.startsWith('`') ? s.slice(1, -1) : (JSON.parse(s.startsWith("'") ? `"${s.slice(1, -1).replace(/"/g, '\\"')}"` : s) as string);

export interface Analysis {
  /** Series names referenced (after resolving {__name__=...}). */
  metrics: string[];
  problems: string[];
}

/** Checks one expression; `problems` is empty when it references only what the catalog exports. */
export function analyze(expr: string, ctx: CheckContext = {}): Analysis {
  const table = seriesTable(ctx);
  const problems: string[] = [];
  let tokens: Token[];
  try {
    tokens = tokenize(expr);
  } catch (e) {
    return { metrics: [], problems: [`cannot tokenize: ${(e as Error).message}`] };
  }
  // Pass 1: each selector (metric name and/or {matchers}) -> the series it names, and every
  // label it uses; label lists of by/without/on/... are collected with their scope.
  const selectors: { start: number; end: number; names: string[] }[] = [];
  const labelUses: { label: string; scope: [number, number]; what: string }[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    const next = tokens[i + 1];
    if (t.kind === 'ident' && LABEL_LIST.has(t.text) && next?.text === '(') {
      const end = closing(tokens, i + 1);
      const scope = aggregationScope(tokens, i) ?? [0, tokens.length - 1];
      for (let j = i + 2; j < end; j++) if (tokens[j]!.kind === 'ident') labelUses.push({ label: tokens[j]!.text, scope, what: `${t.text} (…)` });
      i = end;
      continue;
    }
    if (t.kind === 'ident' && t.text === 'label_values' && next?.text === '(') {
      // Grafana: label_values(selector, label) or label_values(label).
      const end = closing(tokens, i + 1);
      let depth = 0;
      let comma = -1;
      for (let j = i + 2; j < end; j++) {
        const x = tokens[j]!.text;
        if ('({['.includes(x) && tokens[j]!.kind === 'punct') depth++;
        else if (')}]'.includes(x) && tokens[j]!.kind === 'punct') depth--;
        else if (x === ',' && depth === 0) comma = j;
      }
      const labelTok = tokens[comma >= 0 ? comma + 1 : i + 2];
      if (labelTok?.kind === 'ident') {
        labelUses.push({ label: labelTok.text, scope: [i + 2, comma >= 0 ? comma : end], what: 'label_values' });
        tokens.splice(labelTok === tokens[i + 2] ? i + 2 : comma + 1, 1, { kind: 'string', text: '""', pos: labelTok.pos });
      }
      i += 1;
      continue;
    }
    if (t.kind === 'ident' && next?.text === '(' && next.kind === 'punct') continue; // a function or aggregator
    if (t.kind === 'ident' && (KEYWORDS.has(t.text.toLowerCase()) || AGGREGATORS.has(t.text))) continue;
    if (t.kind === 'ident' || (t.kind === 'punct' && t.text === '{')) {
      const start = i;
      const names: string[] = [];
      let end = i;
      if (t.kind === 'ident') names.push(t.text);
      const brace = t.kind === 'punct' ? i : next?.text === '{' ? i + 1 : -1;
      if (brace >= 0) {
        end = closing(tokens, brace);
        const matchers: { label: string; op: string; value: string }[] = [];
        for (let j = brace + 1; j < end; j++) {
          const l = tokens[j]!;
          if (l.kind !== 'ident') continue;
          const op = tokens[j + 1];
          const v = tokens[j + 2];
          if (op?.kind !== 'op' || !v || v.kind !== 'string') {
            problems.push(`malformed matcher after ${l.text}`);
            continue;
          }
          matchers.push({ label: l.text, op: op.text, value: unquote(v.text) });
          j += 2;
        }
        for (const m of matchers.filter((x) => x.label === '__name__')) {
          const re = m.op === '=~' || m.op === '!~' ? new RegExp(`^(?:${m.value})$`) : undefined;
          const hit = [...table.keys()].filter((n) => (re ? re.test(n) === (m.op === '=~') : (n === m.value) === (m.op === '=')));
          if (!hit.length) problems.push(`{__name__${m.op}${JSON.stringify(m.value)}} matches no exported metric`);
          names.push(...hit);
        }
        for (const m of matchers) if (m.label !== '__name__') labelUses.push({ label: m.label, scope: [start, end], what: 'matcher' });
      }
      selectors.push({ start, end, names });
      i = end;
    }
  }
  const metrics = [...new Set(selectors.flatMap((s) => s.names))];
  for (const n of metrics) if (!table.has(n)) problems.push(`unknown metric ${n}`);
  for (const u of labelUses) {
    const inScope = selectors
      .filter((s) => s.start >= u.scope[0] && s.end <= u.scope[1])
      .flatMap((s) => s.names)
      .filter((n) => table.has(n));
    if (!inScope.length) {
      // A label with no known metric in scope: only target labels can be vouched for.
      if (!(TARGET_LABELS as readonly string[]).includes(u.label) && metrics.every((n) => table.has(n)))
        problems.push(`label ${u.label} (${u.what}) is used where no metric carries it`);
      continue;
    }
    if (!inScope.some((n) => table.get(n)!.labels.has(u.label)))
      problems.push(`label ${u.label} (${u.what}) is not a label of ${[...new Set(inScope)].join(', ')}`);
  }
  return { metrics, problems };
}

/** The token span an aggregation's by/without list applies to, when `i` is one. */
function aggregationScope(tokens: Token[], i: number): [number, number] | undefined {
  const kw = tokens[i]!.text;
  if (kw !== 'by' && kw !== 'without') return undefined;
  const listEnd = closing(tokens, i + 1);
  // sum by (l) (expr)
  if (tokens[i - 1]?.kind === 'ident' && AGGREGATORS.has(tokens[i - 1]!.text) && tokens[listEnd + 1]?.text === '(') {
    return [listEnd + 1, closing(tokens, listEnd + 1)];
  }
  // sum (expr) by (l)
  if (tokens[i - 1]?.text === ')') {
    let depth = 0;
    for (let j = i - 1; j >= 0; j--) {
      if (tokens[j]!.text === ')') depth++;
      else if (tokens[j]!.text === '(' && --depth === 0) return [j, i - 1];
    }
  }
  return undefined;
}

/** Labels of a recorded series: the outermost `by (…)` list without le, else its metrics' labels. */
export function recordedLabels(expr: string, ctx: CheckContext = {}): string[] {
  const tokens = tokenize(expr);
  const i = tokens.findIndex((t) => t.kind === 'ident' && t.text === 'by');
  if (i >= 0) {
    const end = closing(tokens, i + 1);
    return tokens
      .slice(i + 2, end)
      .filter((t) => t.kind === 'ident' && t.text !== 'le')
      .map((t) => t.text);
  }
  const table = seriesTable(ctx);
  return [...new Set(analyze(expr, ctx).metrics.flatMap((n) => [...(table.get(n)?.labels ?? [])]))];
}

interface RulesFile {
  groups: { name: string; rules: { record?: string; alert?: string; expr: string }[] }[];
}

/** Recording rules of a rules file with their labels. */
export function recordingRules(yamlText: string): Map<string, readonly string[]> {
  const f = parseYaml(yamlText) as RulesFile;
  const m = new Map<string, readonly string[]>();
  for (const g of f.groups) for (const r of g.rules) if (r.record) m.set(r.record, recordedLabels(r.expr));
  return m;
}

/** Every expression of a rules file, named by its rule. */
export function ruleExpressions(yamlText: string): { where: string; expr: string }[] {
  const f = parseYaml(yamlText) as RulesFile;
  return f.groups.flatMap((g) => g.rules.map((r) => ({ where: `${g.name}/${r.record ?? r.alert}`, expr: r.expr })));
}

export function checkRuleFile(yamlText: string): string[] {
  const recorded = recordingRules(yamlText);
  return ruleExpressions(yamlText).flatMap(({ where, expr }) => analyze(expr, { recorded }).problems.map((p) => `${where}: ${p}`));
}
