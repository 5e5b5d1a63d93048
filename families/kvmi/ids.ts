// The one id -> name table of KVM introspection (KVMI): events, commands, reply actions and
// the KVM error codes commands answer with. KVMI was never merged; it ships in kernels built
// from the series "VM introspection" (Adalbert Lazăr et al., Bitdefender), v7 of 7 Feb 2020
// through v12 of 6 Oct 2021. Sources: include/uapi/linux/kvmi.h, include/uapi/linux/kvm_para.h
// and virt/kvm/introspection/kvmi_msg.c of each revision (the v7 posting, seed 001, and the
// KVM-VMI/kvm tree that carries the series).
//
// Which table applies. Every revision reports KVMI_VERSION = 1 (KVMI_GET_VERSION), so the
// version the kernel reports cannot tell them apart. The ABI is instead told by the kernel's
// own symbols (families/kvmi/family.ts, detectKvmi):
//  - 'v10-v12': kvmi_send_vcpu_event. v10 (25 Nov 2020) split VM and vCPU messages: VM ids
//    are even (KVMI_VM_MESSAGE_ID(n) = n << 1), vCPU ids odd ((n << 1) | 1), and the same for
//    events (KVMI_VM_EVENT_ID / KVMI_VCPU_EVENT_ID).
//  - 'v7-v9': kvmi_send_event. One sequential numbering for messages and for events.
// Only what is the same across the revisions of a generation is decoded; anything else
// (ids that moved between v7, v8 and v9, or between v10/v11 and v12) is exported as its
// number, never dropped.

export type KvmiAbi = 'v7-v9' | 'v10-v12';

/** Event ids (the `event` label). */
const EVENTS: Record<KvmiAbi, Readonly<Record<number, string>>> = {
  // v10..v12 (include/uapi/linux/kvmi.h): KVMI_VM_EVENT_UNHOOK = KVMI_VM_EVENT_ID(0) and
  // KVMI_VCPU_EVENT_<X> = KVMI_VCPU_EVENT_ID(0..9), in this order.
  'v10-v12': {
    0: 'UNHOOK',
    1: 'PAUSE',
    3: 'HYPERCALL',
    5: 'BREAKPOINT',
    7: 'CR',
    9: 'TRAP',
    11: 'XSETBV',
    13: 'DESCRIPTOR',
    15: 'MSR',
    17: 'PF',
    19: 'SINGLESTEP',
  },
  // v7..v9: KVMI_EVENT_UNHOOK 0, KVMI_EVENT_PAUSE_VCPU 1 ... KVMI_EVENT_PF 9 (v7 patches
  // 43-72), KVMI_EVENT_SINGLESTEP 10 (v7 patch 75, appended).
  'v7-v9': {
    0: 'UNHOOK',
    1: 'PAUSE',
    2: 'HYPERCALL',
    3: 'BREAKPOINT',
    4: 'CR',
    5: 'TRAP',
    6: 'XSETBV',
    7: 'DESCRIPTOR',
    8: 'MSR',
    9: 'PF',
    10: 'SINGLESTEP',
  },
};

/** Message ids (the `command` label), names as in the uapi header. */
const COMMANDS: Record<KvmiAbi, Readonly<Record<number, string>>> = {
  // v10..v12. VM messages: KVMI_VM_MESSAGE_ID(0..9); id 20 is KVMI_VM_GET_MAX_GFN in one
  // revision and KVMI_VM_SET_PAGE_ACCESS in another (and 22 the latter), so 20+ stay numbers.
  // vCPU messages: KVMI_VCPU_MESSAGE_ID(0..14), the same in v10..v12.
  'v10-v12': {
    0: 'KVMI_VM_EVENT',
    2: 'KVMI_GET_VERSION',
    4: 'KVMI_VM_CHECK_COMMAND',
    6: 'KVMI_VM_CHECK_EVENT',
    8: 'KVMI_VM_GET_INFO',
    10: 'KVMI_VM_CONTROL_EVENTS',
    12: 'KVMI_VM_READ_PHYSICAL',
    14: 'KVMI_VM_WRITE_PHYSICAL',
    16: 'KVMI_VM_PAUSE_VCPU',
    18: 'KVMI_VM_CONTROL_CLEANUP',
    1: 'KVMI_VCPU_EVENT',
    3: 'KVMI_VCPU_GET_INFO',
    5: 'KVMI_VCPU_CONTROL_EVENTS',
    7: 'KVMI_VCPU_GET_REGISTERS',
    9: 'KVMI_VCPU_SET_REGISTERS',
    11: 'KVMI_VCPU_GET_CPUID',
    13: 'KVMI_VCPU_CONTROL_CR',
    15: 'KVMI_VCPU_INJECT_EXCEPTION',
    17: 'KVMI_VCPU_GET_XCR',
    19: 'KVMI_VCPU_GET_XSAVE',
    21: 'KVMI_VCPU_SET_XSAVE',
    23: 'KVMI_VCPU_GET_MTRR_TYPE',
    25: 'KVMI_VCPU_CONTROL_MSR',
    27: 'KVMI_VCPU_CONTROL_SINGLESTEP',
    29: 'KVMI_VCPU_TRANSLATE_GVA',
  },
  // v7..v9, one sequence (seed 001: KVMI_VM_GET_MAX_GFN 17, KVMI_VCPU_GET_XSAVE 18).
  // 1 is KVMI_EVENT_REPLY in v7 and KVMI_EVENT in v8+ (the tool's reply to an event). Ids
  // from 22 on differ between v7 (singlestep, translate) and v9 (cleanup, xcr, set_xsave
  // inserted), so they stay numbers.
  'v7-v9': {
    1: 'KVMI_EVENT',
    2: 'KVMI_GET_VERSION',
    3: 'KVMI_VM_CHECK_COMMAND',
    4: 'KVMI_VM_CHECK_EVENT',
    5: 'KVMI_VM_GET_INFO',
    6: 'KVMI_VM_CONTROL_EVENTS',
    7: 'KVMI_VM_READ_PHYSICAL',
    8: 'KVMI_VM_WRITE_PHYSICAL',
    9: 'KVMI_VCPU_GET_INFO',
    10: 'KVMI_VCPU_PAUSE',
    11: 'KVMI_VCPU_CONTROL_EVENTS',
    12: 'KVMI_VCPU_GET_REGISTERS',
    13: 'KVMI_VCPU_SET_REGISTERS',
    14: 'KVMI_VCPU_GET_CPUID',
    15: 'KVMI_VCPU_CONTROL_CR',
    16: 'KVMI_VCPU_INJECT_EXCEPTION',
    17: 'KVMI_VM_GET_MAX_GFN',
    18: 'KVMI_VCPU_GET_XSAVE',
    19: 'KVMI_VCPU_GET_MTRR_TYPE',
    20: 'KVMI_VCPU_CONTROL_MSR',
    21: 'KVMI_VM_SET_PAGE_ACCESS',
  },
};

/** KVMI_EVENT_ACTION_* (include/uapi/linux/kvmi.h, the same in v7..v12). */
const ACTIONS: Readonly<Record<number, string>> = { 0: 'continue', 1: 'retry', 2: 'crash' };
/** ACTION_UNREADABLE in families/kvmi/kvmi.bpf.c: a reply came, its action could not be read. */
const ACTION_UNREADABLE = 0xffffffff;

/** KVM_E* (include/uapi/linux/kvm_para.h; KVM_EAGAIN, KVM_ENOENT, KVM_ENOMEM, KVM_EBUSY
 * added by the series, "KVM: add new error codes for VM introspection"). Commands reply
 * with their negation. */
export const KVM_ERRORS: Readonly<Record<number, string>> = {
  1000: 'KVM_ENOSYS',
  14: 'KVM_EFAULT',
  22: 'KVM_EINVAL',
  7: 'KVM_E2BIG',
  1: 'KVM_EPERM',
  95: 'KVM_EOPNOTSUPP',
  11: 'KVM_EAGAIN',
  2: 'KVM_ENOENT',
  12: 'KVM_ENOMEM',
  16: 'KVM_EBUSY',
};

export function eventName(abi: KvmiAbi, id: number): string {
  return EVENTS[abi][id] ?? String(id);
}

export function commandName(abi: KvmiAbi, id: number): string {
  return COMMANDS[abi][id] ?? String(id);
}

export function actionName(action: number): string {
  if (action === ACTION_UNREADABLE) return 'unreadable';
  return ACTIONS[action] ?? String(action);
}

/** A command's result: "ok", or the KVM error name of -err ("KVM_EINVAL"), else the number. */
export function resultName(err: number): string {
  if (err === 0) return 'ok';
  return (err < 0 ? KVM_ERRORS[-err] : undefined) ?? String(err);
}
