// Lifecycle and privileges of the real agent: SIGTERM and SIGKILL leave none of its BPF
// programs or links in the kernel, and --drop-capabilities leaves it serving with empty
// capability sets. Other agents run on this machine at the same time, so every assertion is
// about the ids this agent held (read from its /proc/PID/fdinfo while it ran).
import test from 'ava';
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { AgentProcess, until, value, writeConfig } from './helpers/agent.js';
import { createCgroup } from './helpers/memcg.js';
import { M } from '../agent/catalog.js';
import { capSets } from '../agent/privileges.js';

interface BpfIds {
  progs: Set<number>;
  links: Set<number>;
}

/** Program and link ids behind the fds a process holds (fdinfo has prog_id / link_id). */
function heldIds(pid: number): BpfIds {
  const ids: BpfIds = { progs: new Set(), links: new Set() };
  for (const fd of fs.readdirSync(`/proc/${pid}/fdinfo`)) {
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    } catch {
      continue;
    }
    const link = /^link_id:\s*(\d+)/m.exec(text);
    const prog = /^prog_id:\s*(\d+)/m.exec(text);
    if (link) ids.links.add(Number(link[1]));
    if (prog) ids.progs.add(Number(prog[1]));
  }
  return ids;
}

function bpftoolIds(what: 'prog' | 'link'): Set<number> {
  const r = spawnSync('bpftool', [what, 'show', '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`bpftool ${what} show: ${r.stderr}`);
  return new Set((JSON.parse(r.stdout) as { id: number }[]).map((x) => x.id));
}

function leftOver(ids: BpfIds): { progs: number[]; links: number[] } {
  const progs = bpftoolIds('prog');
  const links = bpftoolIds('link');
  return { progs: [...ids.progs].filter((i) => progs.has(i)), links: [...ids.links].filter((i) => links.has(i)) };
}

async function agentIds(agent: AgentProcess): Promise<BpfIds> {
  const ids = heldIds(agent.proc.pid!);
  // While it runs, bpftool sees every one of them: the check after exit is meaningful.
  const live = leftOver(ids);
  if (live.progs.length !== ids.progs.size || live.links.length !== ids.links.size) throw new Error("bpftool does not list the agent's own ids");
  return ids;
}

async function gone(ids: BpfIds): Promise<{ progs: number[]; links: number[] }> {
  // Release after the last fd closes is deferred in the kernel (RCU, workqueues): poll.
  let last = leftOver(ids);
  await until(
    async () => ((last = leftOver(ids)).progs.length + last.links.length === 0 ? true : undefined),
    15_000,
    "the agent's programs and links to leave the kernel",
  ).catch(() => undefined);
  return last;
}

for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
  test.serial(`after ${signal} none of the agent's BPF programs or links is left (bpftool prog/link show)`, async (t) => {
    const agent = await AgentProcess.start(['--hot', 'memcg_uncharge']);
    t.teardown(() => agent.stop('SIGKILL'));
    const ids = await agentIds(agent);
    t.true(ids.progs.size >= 3, `programs held: ${[...ids.progs].join(',')}`);
    t.true(ids.links.size >= 3, `links held: ${[...ids.links].join(',')}`);
    const code = await agent.stop(signal);
    if (signal === 'SIGTERM') {
      t.is(code, 0, agent.stderr);
      t.regex(agent.stderr, /msg=stopping signal=SIGTERM/);
    } else {
      t.is(agent.proc.signalCode, 'SIGKILL');
    }
    t.deepEqual(await gone(ids), { progs: [], links: [] });
  });
}

test.serial('--drop-capabilities: CapEff/CapPrm 0 on the main thread, map reads still feed /metrics, SIGTERM still detaches', async (t) => {
  const agent = await AgentProcess.start(['--hot', 'memcg_uncharge', '--drop-capabilities']);
  t.teardown(() => agent.stop('SIGKILL'));
  const pid = agent.proc.pid!;
  const caps = capSets(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  t.is(caps.eff, 0n);
  t.is(caps.prm, 0n);
  t.is(caps.bnd, 0n);
  t.regex(fs.readFileSync(`/proc/${pid}/status`, 'utf8'), /^NoNewPrivs:\s*1/m);
  const ids = await agentIds(agent);
  let s = await agent.scrape();
  t.is(value(s, M.capabilitiesDropped.name), 1);
  // Node's own threads were created before the drop; capset reaches only the caller.
  const threads = value(s, M.privilegedThreads.name)!;
  t.log(`threads still privileged after capset: ${threads}`);

  // A cgroup created and used after the drop: the BPF map is read through its fd and the
  // new cgroup's path is resolved without capabilities.
  const cg = createCgroup(`hvwatch-capdrop-${process.pid}`);
  t.teardown(() => cg.remove());
  spawnSync('sh', ['-c', `echo $$ > ${cg.dir}/cgroup.procs && dd if=/dev/zero of=/dev/null bs=1M count=4 status=none`]);
  s = await until(
    async () => {
      const x = await agent.scrape();
      return (value(x, `${M.memcgUnchargeBatchPages.name}_count`, { cgroup: cg.path }) ?? 0) > 0 ? x : undefined;
    },
    15_000,
    `uncharge series for ${cg.path} after the drop`,
  );
  t.true(value(s, `${M.memcgUnchargeBatchPages.name}_sum`, { cgroup: cg.path })! > 0);

  t.is(await agent.stop('SIGTERM'), 0, agent.stderr);
  t.deepEqual(await gone(ids), { progs: [], links: [] });
});

test.serial('privileges.user: every thread ends with empty capability sets under that user', async (t) => {
  const cfg = writeConfig('privileges:\n  dropCapabilities: true\n  user: nobody\n');
  const agent = await AgentProcess.start(['--config', cfg, '--hot', 'memcg_uncharge']);
  t.teardown(() => agent.stop('SIGKILL'));
  const pid = agent.proc.pid!;
  t.regex(fs.readFileSync(`/proc/${pid}/status`, 'utf8'), /^Uid:\s*65534\s+65534\s+65534\s+65534/m);
  const tasks = fs.readdirSync(`/proc/${pid}/task`);
  t.true(tasks.length > 1);
  for (const tid of tasks) t.is(capSets(fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8')).eff, 0n, `thread ${tid}`);
  const s = await agent.scrape();
  t.is(value(s, M.privilegedThreads.name), 0);
  t.is(value(s, M.capabilitiesDropped.name), 1);
  t.true((value(s, M.probeAttached.name, { probe: 'memcg_uncharge' }) ?? 0) === 1);
  const ids = await agentIds(agent);
  t.is(await agent.stop('SIGTERM'), 0, agent.stderr);
  t.deepEqual(await gone(ids), { progs: [], links: [] });
});
