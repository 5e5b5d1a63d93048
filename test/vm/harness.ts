/**
 * VM harness: run a shell script as root inside another Debian kernel under QEMU (TCG, no KVM
 * needed), with the host root shared read-only over 9p under a tmpfs overlay, so the host's node,
 * bpftool and the agent's build run unchanged in the guest. See /work/shared/VM-RECIPE.md.
 *
 * Kernels come from the Debian archive the host's apt is pointed at (bookworm, bookworm-updates,
 * bookworm-security). What `apt-cache search --names-only '^linux-image-'` / `apt-cache policy`
 * showed when this was written:
 *  - 6.1:  linux-image-6.1.0-{47..56}-amd64 (bookworm main: -47, -50; bookworm-security: up to -56,
 *          which is what the linux-image-amd64 meta-package depends on).
 *  - 6.12: linux-image-6.12.{100..117}+deb12-amd64 from bookworm-security (Debian 12's "linux-6.12"
 *          package; meta-package linux-image-6.12-amd64). Its modules are .ko.xz, virtio_pci is built in.
 *  - 5.10: not offered (it is bullseye's kernel and bullseye is not in sources.list), so it is
 *          simply absent from the matrix.
 * kernelMatrix() takes the newest offered package of each series; pin with
 * HVWATCH_VM_KERNELS="linux-image-6.1.0-50-amd64,...". Caches live in HVWATCH_VM_CACHE
 * (default /var/cache/hvwatch-vm): kernels/<package>/ (dpkg -x + depmod), initramfs/, runs/.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

export const CACHE_DIR = process.env['HVWATCH_VM_CACHE'] ?? '/var/cache/hvwatch-vm';
const SERIES = ['5.10', '6.1', '6.12'];
const KEEP_RUNS = 30;

export interface KernelEntry {
  name: string;
  package: string;
  release: string;
}
export interface GuestOptions {
  timeoutMs?: number; // hard timeout per boot attempt (default 120000)
  retries?: number; // extra boots when an attempt produced no result (hang/crash), default 1
  cpu?: string; // QEMU -cpu (default 'EPYC': nested SVM with npt=Y)
  memMb?: number; // default 2048
  smp?: number; // default 2
  modules?: string[]; // modprobe lines run before the script, e.g. ['kvm_amd nested=1']; failure => status 254
  env?: Record<string, string>; // extra environment for the script
  append?: string[]; // extra kernel command-line parameters, e.g. ['ima_appraise=fix']
}
export interface GuestResult {
  status: number | null; // script exit status; null = no result (hang/crash)
  stdout: string;
  stderr: string;
  console: string; // serial console (kernel log + init messages); see describeRun()
  timedOut: boolean; // the last attempt hit timeoutMs
  attempts: number;
  seconds: number; // wall time of all attempts
  bootSeconds: number | null; // guest uptime when the script started
  scriptSeconds: number | null; // guest time the script (plus modprobes) took
  outDir: string; // last attempt: console.log, qemu.log, stdout, stderr, status, script.sh, guest.sh
}

const execFileP = promisify(execFile);
async function exec(cmd: string, args: string[], cwd?: string): Promise<string> {
  const { stdout } = await execFileP(cmd, args, { cwd, maxBuffer: 64 << 20, encoding: 'utf8' });
  return stdout;
}
/** A POSIX shell single-quoted word (for the guest scripts the tests write). */
export const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
const sha = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 12);
const tmpName = (p: string): string => `${p}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;

/** Why a guest test cannot run on this host before any kernel is looked at: the agent is not
 * built under `root`, or the first of `tools` (command, how to get it) is missing. */
export function hostToolsReason(root: string, tools: [cmd: string, install: string][]): string | undefined {
  if (!fs.existsSync(path.join(root, 'dist/agent/cli.js'))) return `agent not built in ${root}dist (run npm run setup)`;
  const missing = tools.find(([cmd]) => !which(cmd));
  return missing && `${missing[0]} not installed (${missing[1]})`;
}

/** The path of an executable on PATH (or /usr/sbin, /sbin), else undefined. */
export function which(cmd: string): string | undefined {
  const dirs = [...(process.env['PATH'] ?? '').split(':'), '/usr/sbin', '/sbin'];
  for (const d of dirs) {
    const p = path.join(d || '.', cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

function isStaticElf(file: string): boolean {
  const b = fs.readFileSync(file);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
  const phoff = Number(b.readBigUInt64LE(0x20)),
    phsize = b.readUInt16LE(0x36),
    phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phsize) === 3 /* PT_INTERP */) return false;
  return true;
}

let matrix: KernelEntry[] | undefined;
/** The kernels to test against: newest offered linux-image-<ver>-amd64 per series in SERIES. */
export function kernelMatrix(): KernelEntry[] {
  if (matrix) return matrix;
  const entry = (pkg: string): KernelEntry | undefined => {
    const m = /^linux-image-((\d+\.\d+)[.\d]*(?:-\d+|\+deb\d+)-amd64)$/.exec(pkg);
    return m ? { name: m[2]!, package: pkg, release: m[1]! } : undefined;
  };
  const pinned = process.env['HVWATCH_VM_KERNELS']?.split(/[\s,]+/).filter(Boolean);
  if (pinned?.length) return (matrix = pinned.flatMap((p) => entry(p) ?? []));
  const apt = (args: string[]): string => {
    const r = spawnSync('apt-cache', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
    return r.status === 0 ? r.stdout : '';
  };
  const names = apt(['pkgnames', 'linux-image-'])
    .split('\n')
    .flatMap((p) => entry(p) ?? [])
    .filter((e) => SERIES.includes(e.name));
  if (!names.length) return (matrix = []);
  // Keep packages that have an installable candidate (pkgnames also lists merely-referenced names).
  const offered = new Set<string>();
  for (const block of apt(['policy', ...names.map((e) => e.package)]).split(/^(?=\S)/m)) {
    const m = /^(\S+):\n[\s\S]*?Candidate: (\S+)/.exec(block);
    if (m && m[2] !== '(none)') offered.add(m[1]!);
  }
  const nums = (e: KernelEntry): number[] => (e.release.match(/\d+/g) ?? []).map(Number);
  const newer = (a: KernelEntry, b: KernelEntry): boolean => {
    const x = nums(a),
      y = nums(b);
    for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) > (y[i] ?? 0);
    return false;
  };
  const best = new Map<string, KernelEntry>();
  for (const e of names) {
    const cur = best.get(e.name);
    if (offered.has(e.package) && (!cur || newer(e, cur))) best.set(e.name, e);
  }
  return (matrix = SERIES.flatMap((s) => best.get(s) ?? []));
}

let unavailable: string | undefined | null = null;
/** Why VM tests can't run here (missing tools, no kernels in apt-cache, unwritable cache), or undefined. */
export function vmUnavailableReason(): string | undefined {
  if (unavailable !== null) return unavailable;
  const compute = (): string | undefined => {
    if (process.env['HVWATCH_VM'] === '0') return 'HVWATCH_VM=0';
    if (process.platform !== 'linux' || process.arch !== 'x64') return `needs linux/x64, not ${process.platform}/${process.arch}`;
    const tools: [string, string][] = [
      ['qemu-system-x86_64', 'qemu-system-x86'],
      ['depmod', 'kmod'],
      ['modprobe', 'kmod'],
      ['cpio', 'cpio'],
      ['xz', 'xz-utils'],
      ['gzip', 'gzip'],
      ['apt-get', 'apt'],
      ['apt-cache', 'apt'],
      ['dpkg-deb', 'dpkg'],
    ];
    for (const [cmd, pkg] of tools) if (!which(cmd)) return `${cmd} not installed (apt-get install ${pkg}; see test/vm/deps.txt)`;
    if (!fs.existsSync('/bin/busybox') || !isStaticElf('/bin/busybox')) return 'static /bin/busybox missing (apt-get install busybox-static)';
    try {
      fs.mkdirSync(CACHE_DIR, { recursive: true });
      fs.accessSync(CACHE_DIR, fs.constants.W_OK);
    } catch (e) {
      return `cache dir ${CACHE_DIR} not writable (set HVWATCH_VM_CACHE): ${(e as Error).message}`;
    }
    if (!kernelMatrix().length) return 'apt-cache offers no linux-image-*-amd64 package (apt-get update?)';
    return undefined;
  };
  return (unavailable = compute());
}

/** Download + unpack + depmod a kernel package into the cache (once). */
export async function prepareKernel(k: KernelEntry): Promise<{ vmlinuz: string; modulesDir: string } | { skip: string }> {
  const dir = path.join(CACHE_DIR, 'kernels', k.package);
  const ready = { vmlinuz: path.join(dir, 'boot', `vmlinuz-${k.release}`), modulesDir: path.join(dir, 'lib/modules', k.release) };
  if (fs.existsSync(path.join(dir, '.ready'))) return ready;
  const tmp = tmpName(dir);
  fs.mkdirSync(tmp, { recursive: true });
  try {
    try {
      await exec('apt-get', ['-q', '-o', 'APT::Sandbox::User=root', 'download', k.package], tmp);
    } catch (e) {
      return {
        skip: `apt-get download ${k.package} failed: ${String((e as { stderr?: string }).stderr ?? e)
          .trim()
          .split('\n')
          .pop()}`,
      };
    }
    const deb = fs.readdirSync(tmp).find((f) => f.endsWith('.deb'));
    if (!deb) return { skip: `apt-get download ${k.package} produced no .deb` };
    await exec('dpkg-deb', ['-x', deb, '.'], tmp);
    fs.rmSync(path.join(tmp, deb));
    await exec(which('depmod') ?? 'depmod', ['-b', tmp, k.release]);
    if (!fs.existsSync(path.join(tmp, 'boot', `vmlinuz-${k.release}`))) return { skip: `${k.package} has no boot/vmlinuz-${k.release}` };
    fs.writeFileSync(path.join(tmp, '.ready'), `${k.package}\n`);
    if (!fs.existsSync(path.join(dir, '.ready'))) fs.rmSync(dir, { recursive: true, force: true }); // left by a crashed run
    try {
      fs.renameSync(tmp, dir);
    } catch {
      /* another process won the race */
    }
    return ready;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

// Modules the initramfs needs to mount the 9p root and the overlay; modprobe --show-depends
// resolves dependencies and what is built in (6.12 has virtio_pci built in).
const INIT_MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'overlay'];
const FAIL_MARK = 'hvwatch-init: FAILED';
const INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
exec 0<>/dev/console 1>&0 2>&0
mount -t proc proc /proc
mount -t sysfs sys /sys
fail() { echo "${FAIL_MARK}: $*"; echo o > /proc/sysrq-trigger; sleep 30; }
for m in $(cat /modules); do insmod /lib/modules/$m || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || fail 'mount 9p hostroot'
mount -t tmpfs -o size=1G,mode=0755 rw /rw && mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail 'mount overlay'
mount -t tmpfs -o mode=0755 run /newroot/run && mkdir -p /newroot/run/hvwatch-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /newroot/run/hvwatch-out || fail 'mount 9p out'
for d in proc sys dev; do mount -o move /$d /newroot/$d; done
exec switch_root /newroot /bin/sh /run/hvwatch-out/guest.sh
`;

/** busybox + the virtio/9p/overlay modules of k + /init, as a gzipped cpio (cached by release + init hash). */
export async function buildInitramfs(k: KernelEntry, modulesDir: string): Promise<string> {
  const out = path.join(CACHE_DIR, 'initramfs', `${k.release}-${sha(INIT + INIT_MODULES.join())}.cpio.gz`);
  if (fs.existsSync(out)) return out;
  const root = path.resolve(modulesDir, '../../..');
  const deps = await exec(which('modprobe') ?? 'modprobe', ['-d', root, '-S', k.release, '--show-depends', '-a', ...INIT_MODULES]);
  const kos = [...new Set(deps.split('\n').flatMap((l) => /^insmod (\S+)/.exec(l)?.[1] ?? []))];
  const tmp = tmpName(out);
  try {
    fs.mkdirSync(path.join(tmp, 'lib/modules'), { recursive: true });
    fs.mkdirSync(path.join(tmp, 'bin'));
    fs.copyFileSync('/bin/busybox', path.join(tmp, 'bin/busybox'));
    const names: string[] = [];
    for (const ko of kos) {
      const name = path.basename(ko).replace(/\.(xz|zst|gz)$/, '');
      const dest = path.join(tmp, 'lib/modules', name);
      if (ko.endsWith('.ko')) fs.copyFileSync(ko, dest);
      else {
        const tool = ko.endsWith('.xz') ? 'xz' : ko.endsWith('.zst') ? 'zstd' : 'gzip';
        const r = spawnSync(tool, ['-dc', ko], { maxBuffer: 256 << 20 });
        if (r.status !== 0) throw new Error(`${tool} -dc ${ko}: ${r.stderr}`);
        fs.writeFileSync(dest, r.stdout);
      }
      names.push(name);
    }
    fs.writeFileSync(path.join(tmp, 'modules'), names.join('\n') + '\n');
    fs.writeFileSync(path.join(tmp, 'init'), INIT, { mode: 0o755 });
    await exec('sh', ['-c', `cd ${q(tmp)} && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > ${q(tmp + '.cpio.gz')}`]);
    fs.renameSync(tmp + '.cpio.gz', out);
    return out;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(tmp + '.cpio.gz', { force: true });
  }
}

// PID 1 after switch_root: set up the guest like a test host, run the script, write results, power off.
function guestScript(k: KernelEntry, modulesDir: string, opts: GuestOptions): string {
  const env = Object.entries(opts.env ?? {})
    .map(([n, v]) => `export ${n}=${q(v)}\n`)
    .join('');
  const mods = (opts.modules ?? [])
    .map((m) => `[ -z "$fail" ] && { modprobe ${m.trim().split(/\s+/).map(q).join(' ')} || fail=${q(`modprobe ${m}`)}; }\n`)
    .join('');
  return `#!/bin/sh
OUT=/run/hvwatch-out
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
${env}mkdir -p /lib/modules/${k.release} && mount --bind ${q(modulesDir)} /lib/modules/${k.release}
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs shm /dev/shm
for f in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
  [ -e /dev/\${f%%:*} ] || ln -s \${f#*:} /dev/\${f%%:*}; done
ulimit -l unlimited
read t0 _ < /proc/uptime
fail=
{
${mods}if [ -n "$fail" ]; then echo "hvwatch: $fail failed" >&2; st=254
else cd ${q(process.cwd())} && /bin/bash $OUT/script.sh < /dev/null; st=$?; fi
} > $OUT/stdout 2> $OUT/stderr
read t1 _ < /proc/uptime
echo "$t0 $t1" > $OUT/times
echo $st > $OUT/status.tmp && sync && mv $OUT/status.tmp $OUT/status && sync
sleep 60 & # started before poweroff: exec'ing anything over 9p afterwards fails and PID 1 exiting panics
echo o > /proc/sysrq-trigger
wait
`;
}

const live = new Set<number>();
process.on('exit', () => {
  for (const pid of live)
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      /* gone */
    }
});

function newRunDir(k: KernelEntry): string {
  const runs = path.join(CACHE_DIR, 'runs');
  fs.mkdirSync(runs, { recursive: true });
  const old = fs.readdirSync(runs).sort();
  for (const d of old.slice(0, Math.max(0, old.length - KEEP_RUNS))) fs.rmSync(path.join(runs, d), { recursive: true, force: true });
  const dir = path.join(runs, `${new Date().toISOString().replace(/[:.]/g, '-')}-${k.release}-${randomBytes(3).toString('hex')}`);
  fs.mkdirSync(dir);
  return dir;
}
const readOr = (f: string): string => {
  try {
    return fs.readFileSync(f, 'utf8');
  } catch {
    return '';
  }
};

async function bootOnce(k: KernelEntry, files: { vmlinuz: string; modulesDir: string; initrd: string }, script: string, opts: GuestOptions) {
  const dir = newRunDir(k);
  fs.writeFileSync(path.join(dir, 'script.sh'), script);
  fs.writeFileSync(path.join(dir, 'guest.sh'), guestScript(k, files.modulesDir, opts));
  const esc = (p: string): string => p.replace(/,/g, ',,');
  const args = [
    '-accel',
    'tcg',
    '-cpu',
    opts.cpu ?? 'EPYC',
    '-m',
    String(opts.memMb ?? 2048),
    '-smp',
    String(opts.smp ?? 2),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-serial',
    `file:${path.join(dir, 'console.log')}`,
    '-kernel',
    files.vmlinuz,
    '-initrd',
    files.initrd,
    '-append',
    ['console=ttyS0 panic=-1 quiet loglevel=4 rw', ...(opts.append ?? [])].join(' '),
    '-virtfs',
    'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot',
    '-virtfs',
    `local,path=${esc(dir)},mount_tag=out,security_model=none,id=out`,
  ];
  const log = fs.openSync(path.join(dir, 'qemu.log'), 'w');
  fs.writeFileSync(path.join(dir, 'qemu.cmd'), ['qemu-system-x86_64', ...args].map(q).join(' ') + '\n');
  const child = spawn('qemu-system-x86_64', args, { detached: true, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  let timedOut = false;
  if (child.pid) live.add(child.pid);
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  }, opts.timeoutMs ?? 120_000);
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });
  clearTimeout(timer);
  if (child.pid) live.delete(child.pid);
  const status = readOr(path.join(dir, 'status')).trim();
  const [t0, t1] = readOr(path.join(dir, 'times')).trim().split(/\s+/).map(Number);
  return {
    status: status === '' ? null : Number(status),
    timedOut,
    outDir: dir,
    stdout: readOr(path.join(dir, 'stdout')),
    stderr: readOr(path.join(dir, 'stderr')),
    console: readOr(path.join(dir, 'console.log')),
    bootSeconds: t0 !== undefined && !Number.isNaN(t0) ? t0 : null,
    scriptSeconds: t0 !== undefined && t1 !== undefined && !Number.isNaN(t1) ? Math.round((t1 - t0) * 100) / 100 : null,
  };
}

/** Boot k, run `script` (bash) as root in the guest, return its output and exit status. Throws if VMs are unavailable. */
export async function runInGuest(k: KernelEntry, script: string, opts: GuestOptions = {}): Promise<GuestResult> {
  const reason = vmUnavailableReason();
  if (reason) throw new Error(`VM unavailable: ${reason}`);
  const prep = await prepareKernel(k);
  if ('skip' in prep) throw new Error(prep.skip);
  const initrd = await buildInitramfs(k, prep.modulesDir);
  const start = Date.now();
  const retries = opts.retries ?? 1;
  for (let attempt = 1; ; attempt++) {
    const r = await bootOnce(k, { ...prep, initrd }, script, opts);
    const initFailed = r.console.includes(FAIL_MARK); // deterministic: don't retry
    if (r.status !== null || initFailed || attempt > retries) {
      return { ...r, attempts: attempt, seconds: Math.round((Date.now() - start) / 100) / 10 };
    }
  }
}

/** A failure report: status, where the files are, and the tails of stderr, console and QEMU's log. */
export function describeRun(r: GuestResult, lines = 40): string {
  const tail = (s: string): string => s.trimEnd().split('\n').slice(-lines).join('\n');
  return [
    `status=${r.status} timedOut=${r.timedOut} attempts=${r.attempts} seconds=${r.seconds} outDir=${r.outDir}`,
    `--- stderr ---\n${tail(r.stderr)}`,
    `--- console ---\n${tail(r.console)}`,
    `--- qemu.log ---\n${tail(readOr(path.join(r.outDir, 'qemu.log')))}`,
  ].join('\n');
}

/**
 * The kernels of the given series, prepared, each with its skip reason (undefined: ready).
 * A series the matrix does not offer still appears, as a placeholder whose skip says so,
 * so a missing kernel is a visible skip, never a silently shorter run. With `vmReason`
 * set nothing is prepared and the caller skips everything for that reason.
 */
export async function guestPlan(series: readonly string[], vmReason: string | undefined): Promise<[KernelEntry, string | undefined][]> {
  const kernels: [KernelEntry, string | undefined][] = [];
  if (!vmReason) {
    for (const k of kernelMatrix().filter((k) => series.includes(k.name))) {
      const p = await prepareKernel(k);
      kernels.push([k, 'skip' in p ? p.skip : undefined]);
    }
  }
  const placeholder = (name: string): KernelEntry => ({ name, package: `-${name}`, release: '-' });
  return series.flatMap((s) => {
    const found = kernels.filter(([k]) => k.name === s);
    return found.length
      ? found
      : [[placeholder(s), vmReason ? undefined : `no ${s} kernel in the matrix (apt-cache offers none, or HVWATCH_VM_KERNELS leaves it out)`]];
  });
}

/**
 * Shell the guest scripts that run the agent share (they set HVWATCH, PORT and URL first):
 * seconds since the script began (ts), GET (curl, else node), a failure that prints the
 * agent's stderr, $tmp, and start_agent [ARGS...]: `hvwatch run` on loopback, waited for
 * until /readyz answers (90 s at most), then t_ready.
 */
export const GUEST_AGENT_SHELL = `
read T0 _ < /proc/uptime
ts() { read now _ < /proc/uptime; awk -v a="$T0" -v b="$now" 'BEGIN { printf "%.2f", b - a }'; }
get() { # GET a URL, body on stdout (curl if the host root has it, node otherwise)
  if command -v curl > /dev/null; then curl -sf --max-time 30 "$1"
  else node -e 'fetch(process.argv[1]).then(async (r) => { if (!r.ok) process.exit(22); process.stdout.write(await r.text()); }, () => process.exit(7))' "$1"; fi
}
fail() { echo "guest_error=$*"; [ -n "\${AG:-}" ] && kill $AG 2>/dev/null; echo '<<<agent-stderr'; cat "$tmp/agent.err" 2>/dev/null; echo 'agent-stderr>>>'; exit 3; }
start_agent() {
  "$HVWATCH" run --listen 127.0.0.1:$PORT "$@" > "$tmp/agent.out" 2> "$tmp/agent.err" &
  AG=$!
  until get "$URL/readyz" > /dev/null 2>&1; do
    kill -0 $AG 2>/dev/null || fail 'agent exited before ready'
    [ "$(ts | cut -d. -f1)" -lt 90 ] || fail 'agent not ready after 90 s'
    sleep 0.3
  done
  echo "t_ready=$(ts)"
}
tmp=$(mktemp -d)
`;
