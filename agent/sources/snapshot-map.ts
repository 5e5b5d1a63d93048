// A map restored from a snapshot: the recorded entries (per-CPU values already folded, as
// MapFd.lookup returns them) behind the same interface as a live map. A count-only snapshot
// (maps the pipeline only counts, e.g. pointer-keyed LRU state) answers count() and has no
// entries. Deletes (a gone cgroup or VM) drop the entry here and, when recording, in the
// live map too, so the next snapshot agrees.
import type { MapView } from './source.js';

export interface SnapshotMeta {
  name: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

export class SnapshotMap implements MapView {
  readonly percpu = false;
  readonly name: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  private readonly byKey = new Map<string, [Buffer, Buffer]>();

  constructor(
    meta: SnapshotMeta,
    entries: Iterable<[Buffer, Buffer]>,
    private readonly countOnly?: number,
    private readonly onDelete?: (key: Buffer) => void,
  ) {
    this.name = meta.name;
    this.keySize = meta.keySize;
    this.valueSize = meta.valueSize;
    this.maxEntries = meta.maxEntries;
    for (const [k, v] of entries) this.byKey.set(k.toString('hex'), [k, v]);
  }

  static empty(meta: SnapshotMeta): SnapshotMap {
    return new SnapshotMap(meta, []);
  }

  keys(): Buffer[] {
    return [...this.byKey.values()].map(([k]) => k);
  }

  *entries(): Generator<[Buffer, Buffer]> {
    yield* [...this.byKey.values()];
  }

  lookup(key: Buffer): Buffer | undefined {
    return this.byKey.get(key.toString('hex'))?.[1];
  }

  lookupRaw(key: Buffer): Buffer | undefined {
    return this.lookup(key);
  }

  count(): number {
    return this.countOnly ?? this.byKey.size;
  }

  counter(i: number): number {
    const k = Buffer.alloc(4);
    k.writeUInt32LE(i);
    const v = this.lookup(k);
    return v && v.length >= 8 ? Number(v.readBigUInt64LE(0)) : 0;
  }

  delete(key: Buffer): boolean {
    this.onDelete?.(key);
    return this.byKey.delete(key.toString('hex'));
  }

  /** Snapshots are read-only views of the past: a write is a bug in the caller. */
  update(): void {
    throw new Error(`map ${this.name} is a snapshot (recorded or replayed): it cannot be written`);
  }
}
