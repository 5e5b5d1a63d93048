// Cost of handlers whose hooks cannot attach on this kernel (fentry/kprobe here, or
// tracepoints that never fire, like kvm_exit on a paravirtual host): each family object's
// SEC("tc") programs named bench_* run their handlers under BPF_PROG_TEST_RUN with `repeat`,
// next to an empty SEC("tc") program on the same path (bench/hooks.ts floor_tc). The
// programs are found in every family's object, so a family that adds a bench_* program is
// measured without touching the benchmark.
import * as path from 'node:path';
import { BpfObject, type BpfProgram } from '../bpf/libbpf.js';
import { BPF_BUILD_DIR } from '../agent/loader.js';
import { declaredFamilies } from '../agent/families.js';
import { median, progress, type Scratch } from './common.js';
import { Floor } from './hooks.js';

/** Hook events one run of a bench program stands for (its comment in the .bpf.c says so),
 * for families that do not declare it themselves (FamilySpec.benchEventsPerRun); a program
 * listed nowhere counts as one event per run, and the table says so. */
const EVENTS_PER_RUN: Record<string, number> = {
  bench_race_cycle: 4, // writeback start, end enter, end exit, uncharge (memcg_fn.bpf.c)
  bench_exit_entry: 2, // one kvm_exit and one kvm_entry (kvm.bpf.c), hash-map tier
  bench_exit_entry_ts: 2, // the same on the task-storage tier
};

export interface TestRunRow {
  family: string;
  program: string;
  repeat: number;
  trials: number;
  nsPerRun: number;
  eventsPerRun: number;
  eventsPerRunKnown: boolean;
  nsPerEvent: number;
  floorNs: number;
  ratio: number;
}

export interface TestRunResult {
  rows: TestRunRow[];
  /** Families whose object has no bench_* program, or that failed to load. */
  uncovered: { family: string; why: string }[];
}

export function testRunCost(scratch: Scratch, quick: boolean): TestRunResult {
  const repeat = quick ? 100_000 : 1_000_000;
  const trials = quick ? 3 : 7;
  const rows: TestRunRow[] = [];
  const uncovered: TestRunResult['uncovered'] = [];
  const floor = Floor.create(scratch.dir, [], false);
  try {
    for (const fam of declaredFamilies()) {
      let obj: BpfObject | undefined;
      try {
        obj = BpfObject.open(path.join(BPF_BUILD_DIR, fam.object));
        const bench = obj.programs().filter((p) => p.section === 'tc' && p.name.startsWith('bench_') && p.name !== 'bench_empty');
        if (!bench.length) {
          uncovered.push({ family: fam.name, why: `no SEC("tc") bench_* program in ${fam.object}` });
          continue;
        }
        const names = new Set(bench.map((b) => b.name));
        for (const p of obj.programs()) p.setAutoload(names.has(p.name));
        obj.load(); // creates the object's maps: the handlers update real maps
        for (const b of bench) {
          progress(`test-run cost: ${fam.name} ${b.name}`);
          const prog: BpfProgram = obj.program(b.name);
          const runs: number[] = [];
          const empty: number[] = [];
          // Interleaved, so drift on a shared machine hits both alike.
          for (let i = 0; i < trials; i++) {
            runs.push(prog.benchRun(repeat).nsPerRun);
            empty.push(floor.tc.benchRun(repeat).nsPerRun);
          }
          const nsPerRun = median(runs);
          const floorNs = median(empty);
          const declared = fam.benchEventsPerRun?.[b.name] ?? EVENTS_PER_RUN[b.name];
          const known = declared !== undefined;
          const eventsPerRun = declared ?? 1;
          rows.push({
            family: fam.name,
            program: b.name,
            repeat,
            trials,
            nsPerRun,
            eventsPerRun,
            eventsPerRunKnown: known,
            nsPerEvent: nsPerRun / eventsPerRun,
            floorNs,
            ratio: nsPerRun / eventsPerRun / floorNs,
          });
        }
      } catch (e) {
        uncovered.push({ family: fam.name, why: (e as Error).message.split('\n')[0]! });
      } finally {
        obj?.close();
      }
    }
  } finally {
    floor.close();
  }
  return { rows, uncovered };
}
