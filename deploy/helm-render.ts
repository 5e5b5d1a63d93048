// A renderer for exactly the Go-template subset deploy/generate.ts writes into the chart,
// with Helm's semantics for it. Helm is not packaged in the registries this project can use,
// so test/deploy.test.ts renders the chart with this and compares the result with the
// plain manifests; it is not `helm template`, and any action outside the subset throws.
//   {{ .Values.a.b }}  {{ .Release.Name }}  {{ .Release.Namespace }}
//   {{- toYaml .Values.x | nindent N }}      (Helm: yaml.Marshal, trailing newline trimmed)
//   {{ .Files.Get "path" | indent N }}       (Sprig indent pads every line, the first too)
//   {{- if .Values.x }} ... {{- end }}       (Go truthiness: false, 0, "", empty list/map, nil)
// `{{-` and `-}}` trim the whitespace (newlines included) before/after the action.
import { stringify } from 'yaml';

export interface RenderContext {
  values: unknown;
  release: { Name: string; Namespace: string };
  files: (path: string) => string | undefined;
}

type Tok = { text: string } | { action: string };

function tokenize(src: string): Tok[] {
  const toks: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const open = src.indexOf('{{', i);
    if (open < 0) {
      toks.push({ text: src.slice(i) });
      break;
    }
    let text = src.slice(i, open);
    const close = src.indexOf('}}', open);
    if (close < 0) throw new Error('unclosed {{');
    let inner = src.slice(open + 2, close);
    if (inner.startsWith('-')) {
      text = text.replace(/\s+$/, '');
      inner = inner.slice(1);
    }
    let next = close + 2;
    if (inner.endsWith('-')) {
      inner = inner.slice(0, -1);
      const m = /^\s*/.exec(src.slice(next))!;
      next += m[0].length;
    }
    toks.push({ text }, { action: inner.trim() });
    i = next;
  }
  return toks;
}

function lookup(ctx: RenderContext, ref: string): unknown {
  if (ref.startsWith('.Values.')) {
    return ref
      .slice(8)
      .split('.')
      .reduce<unknown>((o, k) => (o !== null && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), ctx.values);
  }
  if (ref === '.Release.Name') return ctx.release.Name;
  if (ref === '.Release.Namespace') return ctx.release.Namespace;
  throw new Error(`unsupported reference ${ref}`);
}

function truthy(v: unknown): boolean {
  if (Array.isArray(v)) return v.length > 0;
  if (v !== null && typeof v === 'object') return Object.keys(v).length > 0;
  return !!v;
}

const pad = (s: string, n: number): string => ' '.repeat(n) + s.replace(/\n/g, `\n${' '.repeat(n)}`);

function evalAction(a: string, ctx: RenderContext): string {
  let m: RegExpExecArray | null;
  if ((m = /^(\.[\w.]+)$/.exec(a))) {
    const v = lookup(ctx, m[1]!);
    if (v === undefined || v === null) return '<no value>';
    if (typeof v === 'object') throw new Error(`${a}: a map or list printed without toYaml`);
    return String(v);
  }
  if ((m = /^toYaml (\.[\w.]+) \| nindent (\d+)$/.exec(a))) {
    const y = stringify(lookup(ctx, m[1]!) ?? null, { lineWidth: 0 }).replace(/\n$/, '');
    return '\n' + pad(y, Number(m[2]));
  }
  if ((m = /^\.Files\.Get "([^"]+)" \| indent (\d+)$/.exec(a))) {
    const f = ctx.files(m[1]!);
    if (f === undefined) throw new Error(`.Files.Get: no file ${m[1]} in the chart`);
    return pad(f, Number(m[2]));
  }
  throw new Error(`unsupported template action {{ ${a} }}`);
}

export function renderTemplate(src: string, ctx: RenderContext): string {
  let out = '';
  const stack: boolean[] = [];
  const on = () => stack.every(Boolean);
  for (const t of tokenize(src)) {
    if ('text' in t) {
      if (on()) out += t.text;
      continue;
    }
    let m: RegExpExecArray | null;
    if ((m = /^if (\.[\w.]+)$/.exec(t.action))) stack.push(on() && truthy(lookup(ctx, m[1]!)));
    else if (t.action === 'end') {
      if (!stack.length) throw new Error('{{ end }} without {{ if }}');
      stack.pop();
    } else if (on()) out += evalAction(t.action, ctx);
  }
  if (stack.length) throw new Error('{{ if }} without {{ end }}');
  return out;
}
