// The probe model. A family is one BPF object; its probes each declare attach candidates
// in priority order; the loader (agent/loader.ts) takes the first that loads and attaches
// on this kernel. How maps become metrics is declared here too, so a new family touches
// only its own files (DESIGN "The shape of a probe family").
import type { AttachKind } from '../../bpf/libbpf.js';
import type { MetricDef } from '../catalog.js';
import type { Log2Range } from '../aggregate/histogram.js';
import type { MetricStore } from '../export/store.js';
import type { CollectContext } from '../aggregate/collect.js';
import type { DecodedEvent } from '../aggregate/events.js';

export type { AttachKind };

export interface Candidate {
  /** Tier, as reported in hvwatch_probe_info{attach}. */
  attach: AttachKind;
  /** Function, tracepoint ("category/name" for tracepoint, "name" for tp_btf) or symbol. */
  target: string;
  /** Programs attached together (an fentry/fexit pair is one candidate). */
  programs: string[];
}

export interface ProbeSpec {
  name: string;
  family: string;
  description: string;
  candidates: Candidate[];
  /** Hot hooks are opt-in (config `hotProbes`); the reason and its measured cost go here. */
  hot?: string;
  /** Declared for kernels that can run it, but no candidate can attach on some (kvmi). */
  optional?: boolean;
}

/** A BPF map field that becomes one metric per key. */
export type FieldExport =
  | { field: string; metric: MetricDef }
  | { field: string; metric: MetricDef; log2: Log2Range; sumField?: string };

export interface KeyLabel {
  label: string;
  field: string;
  /** Name of a label decoder (agent/aggregate/decoders.ts). */
  decoder: string;
}

export interface MapExport {
  map: string;
  labels: KeyLabel[];
  fields: FieldExport[];
  /** Metrics computed from one folded value (e.g. in-flight = started - completed). */
  derived?: { metric: MetricDef; compute: (v: Readonly<Record<string, number>>) => number }[];
}

export interface FamilySpec {
  name: string;
  /** BPF object file name under bpf/build/. */
  object: string;
  probes: ProbeSpec[];
  maps: MapExport[];
  /** Rare events (races, failures) from a BPF ring buffer, decoded by the struct's BTF. */
  events?: {
    map: string;
    struct: string;
    onEvents: (events: DecodedEvent[], store: MetricStore) => void;
  };
  /** Extra scrape-time work that reads outside BPF (cgroupfs, procfs). */
  collect?: (ctx: CollectContext, store: MetricStore) => void;
}
