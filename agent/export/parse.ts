// A parser for the Prometheus text exposition format (0.0.4), and the sample lines of
// OpenMetrics text (exemplars are read and dropped). It is the one reader of /metrics
// text in the tree: `hvwatch top` scrapes an agent with it, and the tests assert on the
// agent's exposition through it. Strict where the format is: a line it cannot read is an
// error naming the line, never a silently skipped sample.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
  /** Present when the line carried one: milliseconds in 0.0.4 text, seconds in OpenMetrics. */
  timestamp?: number;
}

export interface MetricFamilyMeta {
  type?: string;
  help?: string;
}

export interface Exposition {
  samples: Sample[];
  /** From `# TYPE` and `# HELP` lines, by family name. */
  families: Map<string, MetricFamilyMeta>;
}

export class ExpositionError extends Error {
  constructor(
    readonly line: number,
    reason: string,
    text: string,
  ) {
    super(`line ${line}: ${reason}: ${text.length > 80 ? `${text.slice(0, 77)}...` : text}`);
    this.name = 'ExpositionError';
  }
}

const NAME_START = /[a-zA-Z_:]/;
const NAME_CHAR = /[a-zA-Z0-9_:]/;
const LABEL_START = /[a-zA-Z_]/;
const LABEL_CHAR = /[a-zA-Z0-9_]/;
// Go's strconv.ParseFloat decimal syntax, which is what Prometheus accepts, plus the
// spellings of the special values that exporters actually write.
const FLOAT = /^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)$/;
const SPECIAL: Record<string, number> = {
  nan: NaN,
  '+inf': Infinity,
  inf: Infinity,
  '-inf': -Infinity,
  '+infinity': Infinity,
  infinity: Infinity,
  '-infinity': -Infinity,
};

/** A sample value or timestamp: decimal float, NaN, +Inf/-Inf. Undefined if it is neither. */
export function parseFloatStrict(s: string): number | undefined {
  if (FLOAT.test(s)) return Number(s);
  const k = s.toLowerCase();
  return Object.prototype.hasOwnProperty.call(SPECIAL, k) ? SPECIAL[k] : undefined;
}

class LineReader {
  pos = 0;
  constructor(
    readonly s: string,
    readonly lineNo: number,
  ) {}

  fail(reason: string): never {
    throw new ExpositionError(this.lineNo, reason, this.s);
  }

  get done(): boolean {
    return this.pos >= this.s.length;
  }

  peek(): string {
    return this.s[this.pos] ?? '';
  }

  skipBlanks(): number {
    const start = this.pos;
    while (this.peek() === ' ' || this.peek() === '\t') this.pos++;
    return this.pos - start;
  }

  ident(start: RegExp, rest: RegExp, what: string): string {
    const from = this.pos;
    if (!start.test(this.peek())) this.fail(`expected ${what}`);
    this.pos++;
    while (!this.done && rest.test(this.peek())) this.pos++;
    return this.s.slice(from, this.pos);
  }

  token(): string {
    const from = this.pos;
    while (!this.done && this.peek() !== ' ' && this.peek() !== '\t') this.pos++;
    return this.s.slice(from, this.pos);
  }

  /** A double-quoted label value with the format's three escapes: \\ \" \n. */
  quoted(): string {
    if (this.peek() !== '"') this.fail("expected '\"' to open a label value");
    this.pos++;
    let out = '';
    for (;;) {
      if (this.done) this.fail('unterminated label value');
      const c = this.s[this.pos++]!;
      if (c === '"') return out;
      if (c !== '\\') {
        out += c;
        continue;
      }
      const e = this.s[this.pos++];
      if (e === '\\') out += '\\';
      else if (e === '"') out += '"';
      else if (e === 'n') out += '\n';
      else this.fail(e === undefined ? 'unterminated label value' : `invalid escape \\${e} in label value`);
    }
  }

  labels(): Record<string, string> {
    const labels: Record<string, string> = {};
    // '{' already consumed.
    for (;;) {
      this.skipBlanks();
      if (this.peek() === '}') {
        this.pos++;
        return labels;
      }
      const name = this.ident(LABEL_START, LABEL_CHAR, 'a label name');
      this.skipBlanks();
      if (this.peek() !== '=') this.fail(`expected '=' after label ${name}`);
      this.pos++;
      this.skipBlanks();
      const v = this.quoted();
      if (Object.prototype.hasOwnProperty.call(labels, name)) this.fail(`duplicate label ${name}`);
      labels[name] = v;
      this.skipBlanks();
      if (this.peek() === ',') this.pos++;
      else if (this.peek() !== '}') this.fail(`expected ',' or '}' after label ${name}`);
    }
  }
}

function sampleLine(r: LineReader): Sample {
  const name = r.ident(NAME_START, NAME_CHAR, 'a metric name');
  let gap = r.skipBlanks();
  let labels: Record<string, string> = {};
  if (r.peek() === '{') {
    r.pos++;
    labels = r.labels();
    gap = r.skipBlanks();
  }
  if (r.done) r.fail('missing value');
  if (gap === 0) r.fail('expected a space before the value');
  const vs = r.token();
  const value = parseFloatStrict(vs);
  if (value === undefined) r.fail(`invalid value ${JSON.stringify(vs)}`);
  const sample: Sample = { name, labels, value };
  r.skipBlanks();
  if (!r.done && r.peek() !== '#') {
    const ts = r.token();
    const t = parseFloatStrict(ts);
    if (t === undefined || !Number.isFinite(t)) r.fail(`invalid timestamp ${JSON.stringify(ts)}`);
    sample.timestamp = t;
    r.skipBlanks();
  }
  if (!r.done) {
    // OpenMetrics exemplar: ` # {labels} value [timestamp]`. Validated, not kept.
    if (r.peek() !== '#') r.fail('unexpected text after the sample');
    r.pos++;
    r.skipBlanks();
    if (r.peek() !== '{') r.fail("expected an exemplar's label set after '#'");
    r.pos++;
    r.labels();
    r.skipBlanks();
    const ev = r.token();
    if (parseFloatStrict(ev) === undefined) r.fail(`invalid exemplar value ${JSON.stringify(ev)}`);
    r.skipBlanks();
    if (!r.done) {
      const et = r.token();
      if (parseFloatStrict(et) === undefined) r.fail(`invalid exemplar timestamp ${JSON.stringify(et)}`);
      r.skipBlanks();
    }
    if (!r.done) r.fail('unexpected text after the exemplar');
  }
  return sample;
}

function commentLine(r: LineReader, families: Map<string, MetricFamilyMeta>): void {
  // '#' already consumed. `# HELP name text` and `# TYPE name type` are metadata; any other
  // comment (and OpenMetrics' `# UNIT`, `# EOF`) is skipped.
  r.skipBlanks();
  const kw = r.token();
  if (kw !== 'HELP' && kw !== 'TYPE') return;
  if (r.skipBlanks() === 0) return; // "# HELP" alone is a plain comment
  const name = r.ident(NAME_START, NAME_CHAR, `a metric name after # ${kw}`);
  const meta = families.get(name) ?? {};
  families.set(name, meta);
  if (kw === 'TYPE') {
    r.skipBlanks();
    const type = r.token();
    if (!/^(counter|gauge|histogram|summary|untyped|unknown|info|stateset|gaugehistogram)$/.test(type)) r.fail(`unknown metric type ${JSON.stringify(type)}`);
    meta.type = type;
    return;
  }
  if (r.peek() === ' ' || r.peek() === '\t') r.pos++;
  // HELP escapes: \\ and \n.
  meta.help = r.s.slice(r.pos).replace(/\\(\\|n)/g, (_m, c: string) => (c === 'n' ? '\n' : '\\'));
}

/** Parses a text exposition: samples in order, plus the TYPE/HELP metadata. Throws
 * ExpositionError (with the 1-based line number) on the first line it cannot read. */
export function parseExpositionText(text: string): Exposition {
  const samples: Sample[] = [];
  const families = new Map<string, MetricFamilyMeta>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i]!;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    const r = new LineReader(line, i + 1);
    r.skipBlanks();
    if (r.done) continue;
    if (r.peek() === '#') {
      r.pos++;
      commentLine(r, families);
      continue;
    }
    samples.push(sampleLine(r));
  }
  return { samples, families };
}

/** The samples of a text exposition (see parseExpositionText). */
export function parseExposition(text: string): Sample[] {
  return parseExpositionText(text).samples;
}
