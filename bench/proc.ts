/**
 * Child processes and /proc readings shared by `bench.ts` and `soak.ts`: long-running children
 * that are always stopped (with their descendants), bounded one-shot commands, free ports, CPU
 * time and RSS of a process tree, and installing missing Debian tools.
 */

/** Aborted to stop everything (time limit, SIGINT/SIGTERM): pending `run`s give up at once. */
export const stopAll = new AbortController();
const children = new Set<Child>();

/**
 * The flags `deno task start` runs sluice with (V8 flags and permissions), read from deno.json,
 * so the benchmark measures what users run.
 */
export function startFlags(): string[] {
  const root = new URL("../", import.meta.url).pathname;
  const start: string = JSON.parse(Deno.readTextFileSync(`${root}deno.json`)).tasks.start;
  const words = start.split(/\s+/);
  return words.slice(words.indexOf("run") + 1, words.indexOf("main.ts"));
}

/** Logs a progress line to stderr. */
export const log = (msg: string): void => console.error(`bench: ${msg}`);

/** Waits `ms`, or less if `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal = stopAll.signal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Resolves to true if `promise` settles within `ms`, false otherwise (never leaves a timer). */
export async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Finds an executable on PATH, also looking in the sbin directories (nginx lives there). */
export async function which(name: string): Promise<string | undefined> {
  const dirs = (Deno.env.get("PATH") ?? "").split(":").filter(Boolean);
  for (const d of ["/usr/local/sbin", "/usr/sbin", "/sbin"]) if (!dirs.includes(d)) dirs.push(d);
  for (const dir of dirs) {
    try {
      const info = await Deno.stat(`${dir}/${name}`);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111)) return `${dir}/${name}`;
    } catch { /* not here */ }
  }
  return undefined;
}

/** Output of a finished command. */
export interface RunResult {
  ok: boolean;
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@linkcode run}. */
export interface RunOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Whether `stopAll` cancels it. @default true */
  abortable?: boolean;
}

/** Runs a command to completion, bounded in time; never throws. */
export async function run(
  cmd: string,
  args: string[],
  timeoutMs: number,
  extra: RunOptions = {},
): Promise<RunResult> {
  const timeout = AbortSignal.timeout(timeoutMs);
  try {
    const out = await new Deno.Command(cmd, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: extra.env,
      cwd: extra.cwd,
      signal: extra.abortable === false ? timeout : AbortSignal.any([stopAll.signal, timeout]),
    }).output();
    const dec = new TextDecoder();
    return {
      ok: out.success,
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
    };
  } catch (err) {
    return { ok: false, code: -1, stdout: "", stderr: String(err) };
  }
}

const usedPorts = new Set<number>();
/** A free loopback port not handed out before: bind port 0, note the port, close. */
export function freePort(): number {
  for (;;) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    if (!usedPorts.has(port)) {
      usedPorts.add(port);
      return port;
    }
  }
}

/**
 * Reads /proc files. Deno wants --allow-all to read /proc directly, so `cat` does it (the task
 * grants --allow-run); "" when unavailable.
 */
export async function procRead(...paths: string[]): Promise<string> {
  const out = await run("sh", ["-c", 'cat "$@" 2>/dev/null', "sh", ...paths], 5000, {
    abortable: false,
  });
  return out.stdout;
}

/** Each /proc/PID/stat line as its pid and the fields after the command name (field 3 on). */
export function statLines(text: string): [number, string[]][] {
  return text.split("\n").flatMap((line): [number, string[]][] => {
    const close = line.lastIndexOf(")");
    if (close < 0) return [];
    return [[Number(line.slice(0, line.indexOf(" "))), line.slice(close + 2).split(" ")]];
  });
}

/** Pids of every descendant of `pid`. */
export async function descendants(pid: number): Promise<number[]> {
  const stats = await run("sh", ["-c", "cat /proc/[0-9]*/stat 2>/dev/null"], 5000, {
    abortable: false,
  });
  const parent = new Map(statLines(stats.stdout).map(([p, fields]) => [p, Number(fields[1])]));
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [child, pp] of parent) {
      if (pp === p && !out.includes(child)) {
        out.push(child);
        walk(child);
      }
    }
  };
  walk(pid);
  return out;
}

let clockTicks = 0;

/**
 * Starts counting the CPU time (user + system) of `pid` and its descendants; the function it
 * returns gives the µs used since, per request (or in all, for `requests` 1).
 */
export async function cpuMeter(pid: number): Promise<(requests: number) => Promise<number>> {
  const pids = [pid, ...(await descendants(pid))];
  const ticks = async () => {
    const out = await procRead(...pids.map((p) => `/proc/${p}/stat`));
    return statLines(out).reduce((sum, [, f]) => sum + Number(f[11]) + Number(f[12]), 0);
  };
  clockTicks ||= Number((await run("getconf", ["CLK_TCK"], 5000)).stdout.trim()) || 100;
  const before = await ticks();
  return async (requests) => ((await ticks()) - before) / clockTicks * 1e6 / requests;
}

/** RSS and peak RSS (VmHWM) of `pid` and its descendants, bytes. */
export async function memoryOf(pid: number): Promise<{ rss: number; peak: number }> {
  const pids = [pid, ...(await descendants(pid))];
  const text = await procRead(...pids.map((p) => `/proc/${p}/status`));
  const sum = (re: RegExp) => [...text.matchAll(re)].reduce((s, m) => s + Number(m[1]) * 1024, 0);
  return { rss: sum(/^VmRSS:\s+(\d+) kB/gm), peak: sum(/^VmHWM:\s+(\d+) kB/gm) };
}

/** Where a child runs: `taskset -c CORES` when set. */
export interface ChildOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** CPU list for taskset, e.g. "1" or "0,1". */
  cores?: string;
  /** Feed stdin from a pipe (see `Child.stdin`). @default false */
  stdin?: boolean;
}

/** A long-running child (backend, proxy) whose output is drained; the last lines are kept. */
export class Child {
  readonly proc: Deno.ChildProcess;
  readonly tail: string[] = [];
  readonly status: Promise<Deno.CommandStatus>;
  exited = false;
  #listeners = new Set<(line: string) => void>();

  constructor(readonly name: string, cmd: string, args: string[], extra: ChildOptions = {}) {
    if (extra.cores !== undefined) [cmd, args] = ["taskset", ["-c", extra.cores, cmd, ...args]];
    this.proc = new Deno.Command(cmd, {
      args,
      cwd: extra.cwd,
      env: extra.env,
      stdin: extra.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    children.add(this);
    this.status = this.proc.status.finally(() => {
      this.exited = true;
      children.delete(this);
    });
    this.#pump(this.proc.stdout);
    this.#pump(this.proc.stderr);
  }

  async #pump(stream: ReadableStream<Uint8Array>) {
    let buf = "";
    try {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.#line(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
        if (buf.length > 65_536) (this.#line(buf), buf = "");
      }
    } catch { /* stream closed */ }
    if (buf) this.#line(buf);
  }

  #line(line: string) {
    this.tail.push(line);
    if (this.tail.length > 30) this.tail.shift();
    for (const listener of this.#listeners) listener(line);
  }

  /** Calls `listener` with every later output line; the returned function stops it. */
  onLine(listener: (line: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Waits for `count` output lines matching `re` (counting from the kept tail); rejects on exit or timeout. */
  waitForLines(re: RegExp, count: number, timeoutMs: number): Promise<string[]> {
    const seen = this.tail.filter((l) => re.test(l));
    if (seen.length >= count) return Promise.resolve(seen.slice(0, count));
    return this.#wait(re, count, timeoutMs, seen);
  }

  /** Waits for the next output line matching `re`, ignoring earlier ones. */
  nextLine(re: RegExp, timeoutMs: number): Promise<string> {
    return this.#wait(re, 1, timeoutMs, []).then((lines) => lines[0]);
  }

  #wait(re: RegExp, count: number, timeoutMs: number, seen: string[]): Promise<string[]> {
    return new Promise((resolve, reject) => {
      const finish = (err?: Error) => {
        clearTimeout(timer);
        this.#listeners.delete(listener);
        if (err) reject(err);
        else resolve(seen);
      };
      const listener = (line: string) => {
        if (re.test(line) && seen.push(line) >= count) finish();
      };
      const timer = setTimeout(
        () => finish(new Error(`${this.name}: no ${re} after ${timeoutMs} ms${this.last()}`)),
        timeoutMs,
      );
      this.#listeners.add(listener);
      this.status.then((s) => finish(new Error(`${this.name} exited (${s.code})${this.last()}`)));
    });
  }

  /** The last output lines, for error messages. */
  last(lines = 8): string {
    return this.tail.length ? `; last output:\n    ${this.tail.slice(-lines).join("\n    ")}` : "";
  }

  /** Why it is not usable, if it has exited. */
  failure(): string | undefined {
    return this.exited ? `${this.name} exited${this.last()}` : undefined;
  }

  /** Sends `signal` (to the process itself, not its descendants). */
  signal(signal: Deno.Signal): void {
    try {
      this.proc.kill(signal);
    } catch { /* already gone */ }
  }

  /** SIGTERM, then SIGKILL (with its descendants) after a grace period. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.exited) return;
    const kids = await descendants(this.proc.pid);
    this.signal("SIGTERM");
    if (!(await within(this.status, graceMs))) {
      log(`${this.name} ignored SIGTERM for ${graceMs} ms; killing it`);
      this.signal("SIGKILL");
      await within(this.status, 2000);
    }
    // nginx workers and other grandchildren: make sure none outlive their parent.
    for (const pid of [...kids, ...(await descendants(this.proc.pid))]) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* already gone */ }
    }
  }
}

/** Stops every child still running. */
export async function stopChildren(): Promise<void> {
  await Promise.all([...children].map((c) => c.stop()));
}

async function isRoot(): Promise<boolean> {
  return (await run("id", ["-u"], 5000, { abortable: false })).stdout.trim() === "0";
}

/** `apt-get install -y` the packages (update first if that fails); never throws. */
export async function aptInstall(packages: string[]): Promise<void> {
  const apt = await which("apt-get");
  if (!apt) return log(`no apt-get; cannot install ${packages.join(", ")}`);
  let cmd = apt;
  let pre: string[] = [];
  if (!(await isRoot())) {
    const sudo = await which("sudo");
    if (!sudo) return log(`not root and no sudo; cannot install ${packages.join(", ")}`);
    cmd = sudo;
    pre = ["-n", apt];
  }
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  log(`installing ${packages.join(", ")} with apt-get`);
  let out = await run(cmd, [...pre, "install", "-y", "-q", ...packages], 180_000, { env });
  if (!out.ok) {
    await run(cmd, [...pre, "update", "-q"], 180_000, { env });
    out = await run(cmd, [...pre, "install", "-y", "-q", ...packages], 180_000, { env });
  }
  if (!out.ok) log(`apt-get install failed: ${out.stderr.trim().split("\n").slice(-2).join(" ")}`);
}

/** Finds `name`, installing Debian package `pkg` when missing (unless `install` is false). */
export async function tool(
  name: string,
  pkg: string,
  install: boolean,
): Promise<string | undefined> {
  let path = await which(name);
  if (!path && install) {
    await aptInstall([pkg]);
    path = await which(name);
  }
  return path;
}

/** Median of `xs` (the lower middle for an even count); NaN when empty. */
export function median(xs: readonly number[]): number {
  const sorted = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor((sorted.length - 1) / 2)] : NaN;
}
