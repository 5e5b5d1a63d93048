// A family's C enums, by enumerator name (FamilySpec.enums): their values are read from the
// object's BTF, so the C source stays the one definition and a value renumbered in C needs
// no edit in TypeScript. The loader checks every declared enum when it loads the family
// (checkEnums): a missing enum or enumerator is that family's load error, not a series
// quietly labelled by the wrong name.
import type { Btf } from '../../bpf/btf.js';
import type { EnumDecl } from '../model/family.js';

export class EnumLabels {
  /** Value -> label, in the order the declaration lists the enumerators. */
  readonly byValue = new Map<number, string>();
  private readonly byLabel = new Map<string, number>();

  constructor(
    readonly decl: EnumDecl,
    btf: Btf,
  ) {
    const t = btf.find(decl.enum, 'enum') ?? btf.find(decl.enum, 'enum64');
    if (!t?.values) throw new Error(`enum ${decl.enum} is not in the object's BTF (export it with EXPORT_BTF_ENUM(${decl.enum}))`);
    const have = new Map(t.values.map((v) => [v.name, Number(v.value)]));
    for (const [enumerator, label] of Object.entries(decl.labels)) {
      const v = have.get(enumerator);
      if (v === undefined) throw new Error(`enum ${decl.enum} has no enumerator ${enumerator} (it has ${[...have.keys()].join(', ')})`);
      this.byValue.set(v, label);
      this.byLabel.set(label, v);
    }
  }

  /** The label of a raw value; `fallback` when the declaration names no enumerator with it. */
  label(raw: number | bigint, fallback: string): string {
    return this.byValue.get(Number(raw)) ?? fallback;
  }

  /** The value of a declared label. */
  valueOf(label: string): number {
    const v = this.byLabel.get(label);
    if (v === undefined) throw new Error(`enum ${this.decl.enum}: no declared label ${label}`);
    return v;
  }
}

// Resolved once per BTF and declaration (a replayed trace brings its own BTF).
const resolved = new WeakMap<Btf, WeakMap<EnumDecl, EnumLabels>>();

export function enumLabels(btf: Btf, decl: EnumDecl): EnumLabels {
  let byDecl = resolved.get(btf);
  if (!byDecl) resolved.set(btf, (byDecl = new WeakMap()));
  let e = byDecl.get(decl);
  if (!e) byDecl.set(decl, (e = new EnumLabels(decl, btf)));
  return e;
}

/** Every declared enum of a family resolves in its object's BTF; throws the first that does not. */
export function checkEnums(btf: Btf, decls: readonly EnumDecl[]): void {
  for (const d of decls) enumLabels(btf, d);
}

/** The labels a declaration lists, in order (for fixed series and field names). */
export function labelsOf<L extends Readonly<Record<string, string>>>(decl: { readonly enum: string; readonly labels: L }): L[keyof L][] {
  return Object.values(decl.labels) as L[keyof L][];
}
