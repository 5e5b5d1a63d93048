// The trace format (`hvwatch record`), version 1. Little-endian throughout.
//
//   file    = magic "HVWTRACE" | u16 version | u16 flags (0) | u32 H | header (H bytes of
//             UTF-8 JSON) | u32 crc32(header) | record* ; the last record is the footer
//   record  = u32 L | u8 type | u8 flags (bit 0: payload deflated) | u16 reserved (0) |
//             f64 t (ms since the recording started, monotonic) | payload (L bytes) |
//             u32 crc32(type .. payload)
//   header  : kernel release, agent and libbpf versions, the probe report (probe set and the
//             chosen attach tiers), and per family its maps (sizes, BTF type ids) and the
//             object's raw BTF, so a trace decodes without the BPF objects it came from.
//   snapshot: u32 M | meta JSON (M bytes: clock, cause, program stats) | u16 families |
//             per family: u16 family index | u16 maps | per map: u16 map index | u32 n |
//             n x (key, value) for "full" maps; nothing more for "count" maps (n is the count)
//   events  : u16 family index | u32 n | n x (u32 len | record) | u32 lookups |
//             per lookup: u16 map index | u8 found | key | value (if found)
//   ident   : JSON (agent/sources/host.ts IdentDelta): cgroup paths, liveness, cgroup
//             files, VM identities that changed
//   footer  : JSON: record counts, bytes, what --max-bytes dropped, why the recording ended
import { z } from 'zod';

export const MAGIC = Buffer.from('HVWTRACE', 'latin1');
export const VERSION = 1;
export const PREAMBLE = 16; // magic, version, flags, header length
export const RECORD_HEAD = 16;
export const RECORD_TAIL = 4;
/** Bounds what one record may claim, so a corrupt length fails fast instead of allocating. */
export const MAX_RECORD = 256 << 20;
export const MAX_HEADER = 64 << 20;
export const FLAG_DEFLATE = 1;

export const RECORD_TYPES = { snapshot: 1, events: 2, ident: 3, footer: 4 } as const;
export type RecordType = keyof typeof RECORD_TYPES;
export const TYPE_NAMES: Record<number, RecordType> = { 1: 'snapshot', 2: 'events', 3: 'ident', 4: 'footer' };

/** A trace that cannot be read: where (byte offset in the file) and what. */
export class TraceError extends Error {
  constructor(
    readonly offset: number,
    readonly problem: string,
  ) {
    super(`byte offset ${offset}: ${problem}`);
    this.name = 'TraceError';
  }
}

const mapSchema = z
  .object({
    name: z.string().min(1),
    keySize: z
      .number()
      .int()
      .min(0)
      .max(1 << 16), // 0: a ring buffer (recorded as count 0)
    valueSize: z
      .number()
      .int()
      .min(0)
      .max(1 << 20),
    maxEntries: z.number().int().min(0),
    percpu: z.boolean(),
    keyType: z.number().int().min(0),
    valueType: z.number().int().min(0),
    content: z.enum(['full', 'count']),
  })
  .strict();

export const headerSchema = z
  .object({
    format: z.literal('hvwatch-trace'),
    agent: z.string(),
    kernel: z.string(),
    libbpf: z.string(),
    hostname: z.string(),
    started: z.string(),
    intervalMs: z.number().min(0),
    maxBytes: z.number().int().positive().nullable(),
    cardinality: z.object({ cgroups: z.number().int().positive(), vms: z.number().int().positive() }).strict(),
    cgroupVersion: z.union([z.literal(1), z.literal(2)]).nullable(),
    probes: z.array(
      z
        .object({
          name: z.string(),
          family: z.string(),
          description: z.string(),
          enabled: z.boolean(),
          skipped: z.string().optional(),
          hot: z.string().optional(),
          candidates: z.array(z.object({ attach: z.string(), target: z.string(), ok: z.boolean(), error: z.string().optional() }).strict()),
          chosen: z
            .object({
              attach: z.string(),
              target: z.string(),
              /** Where the probe keeps per-thread state (task storage, hash), when it keeps any. */
              state: z.string().optional(),
              /** Shared hooks it runs on by tail call after another probe's program. */
              chained: z.array(z.object({ hook: z.string(), after: z.string() }).strict()).optional(),
            })
            .strict()
            .nullable(),
          absent: z.boolean().optional(),
        })
        .strict(),
    ),
    families: z
      .array(
        z
          .object({
            name: z.string().min(1),
            object: z.string(),
            btf: z.string(), // base64 of the deflated (raw deflate) BTF
            maps: z.array(mapSchema).max(0xffff),
            programs: z.array(z.object({ probe: z.string(), program: z.string() }).strict()),
          })
          .strict(),
      )
      .max(0xffff),
  })
  .strict();

export type TraceHeader = z.infer<typeof headerSchema>;
export type TraceMapMeta = z.infer<typeof mapSchema>;

export const snapshotMetaSchema = z
  .object({
    now: z.number(),
    gc: z.boolean(),
    cause: z.enum(['interval', 'scrape', 'final']),
    bpfStats: z.boolean(),
    /** [runs, run ns] per program, families then programs in header order. */
    progs: z.array(z.tuple([z.number(), z.number()])),
  })
  .strict();
export type SnapshotMeta = z.infer<typeof snapshotMetaSchema>;

const vmId = z.object({ name: z.string(), source: z.enum(['qemu', 'libvirt', 'firecracker', 'cloud-hypervisor', 'pid']) }).strict();
export const identSchema = z
  .object({
    cg: z.array(z.tuple([z.string().regex(/^\d+$/), z.string().nullable()])).optional(),
    alive: z.array(z.tuple([z.string().regex(/^\d+$/), z.boolean()])).optional(),
    files: z.array(z.tuple([z.string(), z.string(), z.string().nullable()])).optional(),
    vm: z.array(z.tuple([z.number().int(), vmId.nullable()])).optional(),
    kube: z.array(z.tuple([z.string(), z.object({ namespace: z.string(), pod: z.string(), container: z.string() }).strict()])).optional(),
  })
  .strict();

export const footerSchema = z
  .object({
    records: z.number().int().min(0),
    bytes: z.number().int().min(0),
    dropped: z.object({ snapshot: z.number().int().min(0), events: z.number().int().min(0), ident: z.number().int().min(0) }).strict(),
    reason: z.string(),
  })
  .strict();
export type TraceFooter = z.infer<typeof footerSchema>;

export interface SnapshotMapData {
  family: number;
  map: number;
  /** null for count-only maps. */
  entries: [Buffer, Buffer][] | null;
  count: number;
}

export type TraceRecord =
  | { type: 'snapshot'; offset: number; t: number; meta: SnapshotMeta; maps: SnapshotMapData[] }
  | { type: 'events'; offset: number; t: number; family: number; records: Buffer[]; lookups: { map: number; key: Buffer; value: Buffer | undefined }[] }
  | { type: 'ident'; offset: number; t: number; delta: z.infer<typeof identSchema> }
  | { type: 'footer'; offset: number; t: number; footer: TraceFooter };
