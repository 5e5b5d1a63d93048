// kvmi family (seed 001): VM introspection events (sent, time to reply, reply action,
// unreplied), unhooks, and introspection commands with their KVM error codes and latency
// (kvmi.bpf.c). KVMI is not upstream: the family is present only on kernels built
// from the KVMI series (v7..v12), and reports "not present" everywhere else.
import { KVMI_METRICS as M } from './metrics.js';
import type { Decoder, EnumDecl, FamilySpec, KernelFacts, ProbeSpec, Services } from '../../agent/model/family.js';
import { enumLabels, labelsOf } from '../../agent/aggregate/enums.js';
import type { Config } from '../../agent/config.js';
import { actionName, commandName, eventName, resultName, type KvmiAbi } from './ids.js';
import { log } from '../../agent/log.js';

export const name = 'kvmi';
export { KVMI_METRICS as metrics } from './metrics.js';
const family = name;

// Function names by series revision (virt/kvm/introspection/kvmi_msg.c, kvmi.c):
//   kvmi_send_vcpu_event, kvmi_job_vcpu_msg, kvmi_is_command_allowed: v10..v12;
//   kvmi_send_event, kvmi_job_vcpu_cmd: v7..v9;
//   kvmi_msg_send_unhook, kvmi_msg_process, kvmi_msg_reply, kvmi_msg_vm_reply,
//   kvmi_msg_vcpu_reply: v7..v12 (the static ones only where not inlined: kvmi_msg_vm_reply
//   has its address taken by kvmi_cmd_read_physical, so it stays a function).
const probes: ProbeSpec[] = [
  {
    name: 'kvmi_events',
    family,
    description: "Introspection events per VM and type, the vCPU's paused time until the reply, the reply action, events left without a reply",
    candidates: [
      { attach: 'fentry', target: 'kvmi_send_vcpu_event', programs: ['fentry_kvmi_send', 'fexit_kvmi_send'] },
      { attach: 'fentry', target: 'kvmi_send_event', programs: ['fentry_kvmi_send', 'fexit_kvmi_send'] },
      { attach: 'kprobe', target: 'kvmi_send_vcpu_event', programs: ['kprobe_kvmi_send', 'kretprobe_kvmi_send'] },
      { attach: 'kprobe', target: 'kvmi_send_event', programs: ['kprobe_kvmi_send', 'kretprobe_kvmi_send'] },
    ],
  },
  {
    name: 'kvmi_unhook',
    family,
    description: 'Unhook notices sent to the introspection tool per VM',
    candidates: [
      { attach: 'fentry', target: 'kvmi_msg_send_unhook', programs: ['fentry_kvmi_unhook'] },
      { attach: 'kprobe', target: 'kvmi_msg_send_unhook', programs: ['kprobe_kvmi_unhook'] },
    ],
  },
  {
    name: 'kvmi_commands',
    family,
    description: 'Introspection commands per VM, command id and result (KVM error code)',
    candidates: [
      { attach: 'fentry', target: 'kvmi_msg_reply', programs: ['fentry_kvmi_reply'] },
      {
        attach: 'fentry',
        target: 'kvmi_msg_vm_reply',
        programs: ['fentry_kvmi_reply', 'fentry_kvmi_vcpu_reply'],
        targets: { fentry_kvmi_vcpu_reply: 'kvmi_msg_vcpu_reply' },
      },
      { attach: 'kprobe', target: 'kvmi_msg_reply', programs: ['kprobe_kvmi_reply'] },
      {
        attach: 'kprobe',
        target: 'kvmi_msg_vm_reply',
        programs: ['kprobe_kvmi_reply', 'kprobe_kvmi_vcpu_reply'],
        targets: { kprobe_kvmi_vcpu_reply: 'kvmi_msg_vcpu_reply' },
      },
    ],
  },
  {
    name: 'kvmi_command_dispatch',
    family,
    description: 'Where commands start being handled (the receiving thread, the vCPU job), for the command latency',
    // Latency only: commands are counted without it, so a kernel whose dispatch functions
    // were inlined leaves this probe off rather than failed.
    optional: true,
    candidates: [
      {
        attach: 'fentry',
        target: 'kvmi_job_vcpu_msg',
        programs: ['fentry_kvmi_cmd_job', 'fentry_kvmi_cmd_received'],
        targets: { fentry_kvmi_cmd_received: 'kvmi_is_command_allowed' },
      },
      { attach: 'fentry', target: 'kvmi_job_vcpu_cmd', programs: ['fentry_kvmi_cmd_job'] },
      {
        attach: 'kprobe',
        target: 'kvmi_job_vcpu_msg',
        programs: ['kprobe_kvmi_cmd_job', 'kprobe_kvmi_cmd_received'],
        targets: { kprobe_kvmi_cmd_received: 'kvmi_is_command_allowed' },
      },
      { attach: 'kprobe', target: 'kvmi_job_vcpu_cmd', programs: ['kprobe_kvmi_cmd_job'] },
    ],
  },
];

/* ---- detection: the kernel's BTF (vmlinux and modules: KVMI lives in kvm.ko) and kallsyms ---- */

/** Any of these means the kernel has KVMI. */
export const KVMI_CORE_FUNCTIONS = ['kvmi_send_vcpu_event', 'kvmi_send_event', 'kvmi_msg_send_unhook', 'kvmi_msg_process'] as const;
/** Reported when found, to say which hooks exist (per-event wrappers, dispatch). */
const KVMI_OTHER_FUNCTIONS = [
  'kvmi_msg_send_vcpu_pause',
  'kvmi_msg_send_vcpu_hypercall',
  'kvmi_msg_send_vcpu_bp',
  'kvmi_msg_send_vcpu_pf',
  'kvmi_msg_send_vcpu_singlestep',
  'kvmi_msg_send_vcpu_cr',
  'kvmi_msg_send_vcpu_trap',
  'kvmi_msg_send_vcpu_xsetbv',
  'kvmi_msg_send_vcpu_descriptor',
  'kvmi_msg_send_vcpu_msr',
  'kvmi_msg_reply',
  'kvmi_msg_vm_reply',
  'kvmi_msg_vcpu_reply',
  'kvmi_is_command_allowed',
  'kvmi_job_vcpu_msg',
  'kvmi_job_vcpu_cmd',
] as const;

export interface KvmiDetection {
  present: boolean;
  /** Which numbering the kernel's symbols imply (families/kvmi/ids.ts). */
  abi?: KvmiAbi;
  /** The KVMI functions found, with where. */
  found: string[];
  reason?: string;
}

/** The ABI generation from the functions found: the send function was renamed in v10. */
export function kvmiAbiOf(found: ReadonlySet<string>): KvmiAbi | undefined {
  if (found.has('kvmi_send_vcpu_event')) return 'v10-v12';
  if (found.has('kvmi_send_event')) return 'v7-v9';
  return undefined;
}

// Presence is decided from names alone: the strings of the kernel BTFs (vmlinux, and the
// modules: KVMI lives in kvm.ko) and the function symbols of /proc/kallsyms, each found in
// one scan for "kvmi_". Parsing those BTFs (and loading the kallsyms table) to ask the same
// question cost some 75 MB of RSS here, much of which stayed after start-up. A BTF string
// may also be a type or member name; every name asked about is a function of the series.
export function detectKvmi(kernel: Pick<KernelFacts, 'btfNamesWithPrefix' | 'kallsymsWithPrefix'>): KvmiDetection {
  const inBtfNames = kernel.btfNamesWithPrefix('kvmi_');
  const inKallsymsNames = kernel.kallsymsWithPrefix('kvmi_');
  const names = new Set<string>();
  const found: string[] = [];
  for (const fn of [...KVMI_CORE_FUNCTIONS, ...KVMI_OTHER_FUNCTIONS]) {
    const inBtf = inBtfNames.has(fn);
    const inKallsyms = inKallsymsNames.has(fn);
    if (inBtf || inKallsyms) {
      names.add(fn);
      found.push(`${fn} (${[inBtf && 'BTF', inKallsyms && 'kallsyms'].filter(Boolean).join('+')})`);
    }
  }
  const present = KVMI_CORE_FUNCTIONS.some((f) => names.has(f));
  if (present) return { present, abi: kvmiAbiOf(names), found };
  return {
    present,
    found,
    reason: `no KVM introspection (KVMI) in this kernel: none of ${KVMI_CORE_FUNCTIONS.join(', ')} in its BTF or /proc/kallsyms (KVMI is not upstream: kernels built from the KVMI v7..v12 series only)`,
  };
}

/* ---- labels ---- */

/** enum unpaired in kvmi.bpf.c (the pairing label). */
const UNPAIRED = {
  enum: 'unpaired',
  labels: { UNPAIRED_EVENT_STALE: 'event_stale', UNPAIRED_EVENT_NO_START: 'event_no_start', UNPAIRED_COMMAND: 'command' },
} as const satisfies EnumDecl;
export const KVMI_UNPAIRED = labelsOf(UNPAIRED);

export function create(_config: Config, services: Services): FamilySpec {
  // Ids are decoded by the ABI this kernel's symbols imply (set from detection at setup);
  // where neither send function is found (the family forced on, as in tests) the v10..v12
  // numbering of the issue applies.
  let abi: KvmiAbi = 'v10-v12';
  // present() and setup() ask the same question: the kernel is scanned once.
  let detected: KvmiDetection | undefined;
  const detect = (): KvmiDetection => (detected ??= detectKvmi(services.kernel));
  const VM = { label: 'vm', field: 'tgid', decoder: services.vms.decoder };
  const EVENT = { label: 'event', field: 'event', decoder: ((raw) => eventName(abi, Number(raw))) as Decoder };
  const COMMAND = { label: 'command', field: 'command', decoder: ((raw) => commandName(abi, Number(raw))) as Decoder };
  return {
    name: family,
    object: 'kvmi.bpf.o',
    probes,
    sizes: { kvmi_events: 'perObject', kvmi_replies: 'perObject', kvmi_commands: 'perObject', kvmi_command_time: 'perObject' },
    maps: [
      {
        map: 'kvmi_events',
        labels: [VM, EVENT],
        fields: [
          { field: 'sent', metric: M.kvmiEvents },
          { field: 'unreplied', metric: M.kvmiUnreplied },
          // From microseconds (a tool answering from a busy loop) to a minute (a human at a debugger).
          { field: 'reply_slots', metric: M.kvmiReplyTime, sumField: 'reply_sum_ns' },
        ],
      },
      {
        map: 'kvmi_replies',
        labels: [VM, EVENT, { label: 'action', field: 'action', decoder: (raw) => actionName(Number(raw)) }],
        fields: [{ field: 'value', metric: M.kvmiReplies }],
      },
      {
        map: 'kvmi_unhooks',
        labels: [VM],
        fields: [{ field: 'value', metric: M.kvmiUnhooks }],
      },
      {
        map: 'kvmi_commands',
        labels: [VM, COMMAND, { label: 'result', field: 'result', decoder: (raw) => resultName(Number(BigInt.asIntN(32, raw))) }],
        fields: [{ field: 'value', metric: M.kvmiCommands }],
      },
      {
        map: 'kvmi_command_time',
        labels: [VM, COMMAND],
        fields: [{ field: 'slots', metric: M.kvmiCommandTime, sumField: 'sum_ns' }],
      },
    ],
    watchMaps: ['hv_vm_seen', 'ev_pending', 'cmd_pending'],
    enums: [UNPAIRED],
    presentMetric: M.kvmiPresent,
    present: () => detect().reason,
    setup() {
      const d = detect();
      if (d.abi) abi = d.abi;
      if (d.present) log('info', 'KVM introspection found', { abi: d.abi ?? `unknown, decoding as ${abi}`, functions: d.found.join(' ') });
    },
    prepare: (ctx, fam) => services.vms.learn(fam, ctx), // names at first sight (agent/services/vm-labels.ts)
    collect(_ctx, store, fam) {
      const un = fam.maps.get('kvmi_unpaired');
      if (un) for (const [i, pairing] of enumLabels(fam.btf, UNPAIRED).byValue) store.set(M.kvmiUnpaired, { pairing }, un.counter(i));
    },
  };
}
