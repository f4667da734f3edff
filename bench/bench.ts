/**
 * `deno task bench`: throughput and latency of sluice against the demo backends, nginx and HAProxy.
 *
 *   deno run --allow-net --allow-read --allow-write --allow-run --allow-env bench/bench.ts \
 *     [--duration 8] [--warmup 5] [--connections 64] [--threads 2] [--loadgen wrk|autocannon]
 *     [--rounds 1] [--backend-procs 1|3] [--no-install] [--no-write] [--out docs/benchmark.md]
 *     [--time-limit SECONDS] [--no-pin]
 *
 * Every server runs as a child process on 127.0.0.1 and is stopped at the end, on error, on
 * SIGINT/SIGTERM and when the time limit is hit. The table goes to stdout and to docs/benchmark.md.
 */
import { parseArgs } from "node:util";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const AUTOCANNON = "npm:autocannon@9.0.0";
const HELLO = /^Hello from backend server on port: (\d+)/;

/**
 * With two or more cores and taskset, each proxy under test gets core 1 to itself while the
 * backends and the load generator share core 0: every proxy is measured on exactly one core,
 * and the rows do not disturb each other through the scheduler. `--no-pin` turns this off.
 */
function pinned(core: 0 | 1, cmd: string, args: string[]): [string, string[]] {
  return PIN ? ["taskset", ["-c", String(core), cmd, ...args]] : [cmd, args];
}

// ---------------------------------------------------------------- options

const { values: opts } = parseArgs({
  args: Deno.args,
  strict: true,
  options: {
    duration: { type: "string", default: "8" },
    warmup: { type: "string", default: "5" },
    connections: { type: "string", default: "64" },
    threads: { type: "string", default: "2" },
    loadgen: { type: "string" },
    "backend-procs": { type: "string", default: "1" },
    "no-install": { type: "boolean", default: false },
    "no-write": { type: "boolean", default: false },
    "no-pin": { type: "boolean", default: false },
    out: { type: "string", default: `${ROOT}/docs/benchmark.md` },
    rounds: { type: "string", default: "1" },
    "time-limit": { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (opts.help) {
  console.log(
    "usage: bench.ts [--duration 8] [--warmup 5] [--connections 64] [--threads 2] " +
      "[--loadgen wrk|autocannon] [--rounds 1] [--backend-procs 1|3] [--no-install] " +
      "[--no-write] [--no-pin] [--out docs/benchmark.md] [--time-limit S]   (durations in seconds)",
  );
  Deno.exit(0);
}
function positive(name: string, value: string, allowZero = false): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < (allowZero ? 0 : 1)) {
    console.error(
      `bench: --${name} must be a whole number${allowZero ? "" : " > 0"} (got ${value})`,
    );
    Deno.exit(2);
  }
  return n;
}
const DURATION = positive("duration", opts.duration);
const WARMUP = positive("warmup", opts.warmup, true);
const CONNECTIONS = positive("connections", opts.connections);
const THREADS = positive("threads", opts.threads);
const BACKEND_PROCS = positive("backend-procs", opts["backend-procs"]);
const ROUNDS = positive("rounds", opts.rounds);
const PIN = !opts["no-pin"] && navigator.hardwareConcurrency >= 2 &&
  (() => {
    try {
      return new Deno.Command("taskset", { args: ["-c", "0", "true"] }).outputSync().success;
    } catch {
      return false;
    }
  })();
/** 8 rows and the two same-core pairings, each: start + warm-up + run + stop; plus setup. */
const TIME_LIMIT = opts["time-limit"] === undefined
  ? 60 + ROUNDS * 10 * (WARMUP + DURATION + 12)
  : positive("time-limit", opts["time-limit"]);
if (BACKEND_PROCS !== 1 && BACKEND_PROCS !== 3) {
  console.error("bench: --backend-procs must be 1 or 3");
  Deno.exit(2);
}
if (opts.loadgen && opts.loadgen !== "wrk" && opts.loadgen !== "autocannon") {
  console.error("bench: --loadgen must be wrk or autocannon");
  Deno.exit(2);
}

// ---------------------------------------------------------------- small helpers

const log = (msg: string) => console.error(`bench: ${msg}`);

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Resolves to true if `promise` settles within `ms`, false otherwise (never leaves a timer). */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Finds an executable on PATH, also looking in the sbin directories (nginx lives there). */
async function which(name: string): Promise<string | undefined> {
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

/** Runs a command to completion, bounded in time; never throws. */
async function run(
  cmd: string,
  args: string[],
  timeoutMs: number,
  extra: { env?: Record<string, string>; cwd?: string; abortable?: boolean } = {},
): Promise<{ ok: boolean; code: number; stdout: string; stderr: string }> {
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
/** A free loopback port: bind port 0, note the port, close. */
function freePort(): number {
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
 * Reads a /proc file. Deno wants --allow-all to read /proc directly, so `cat` does it
 * (the task already grants --allow-run); "" when unavailable.
 */
async function procRead(...paths: string[]): Promise<string> {
  const out = await run("sh", ["-c", 'cat "$@" 2>/dev/null', "sh", ...paths], 5000, {
    abortable: false,
  });
  return out.stdout;
}

/** Each /proc/PID/stat line as its pid and the fields after the command name (field 3 on). */
function statLines(text: string): [number, string[]][] {
  return text.split("\n").flatMap((line): [number, string[]][] => {
    const close = line.lastIndexOf(")");
    if (close < 0) return [];
    return [[Number(line.slice(0, line.indexOf(" "))), line.slice(close + 2).split(" ")]];
  });
}

let clockTicks = 0;

/**
 * Starts counting the CPU time (user + system) of `pid` and its descendants; the function it
 * returns gives the µs used since, per request. Read with cat: Deno only reads /proc with -A.
 */
async function cpuMeter(pid: number): Promise<(requests: number) => Promise<number>> {
  const pids = [pid, ...(await descendants(pid))];
  const ticks = async () => {
    const out = await run("cat", pids.map((p) => `/proc/${p}/stat`), 5000, { abortable: false });
    return statLines(out.stdout).reduce((sum, [, f]) => sum + Number(f[11]) + Number(f[12]), 0);
  };
  clockTicks ||= Number((await run("getconf", ["CLK_TCK"], 5000)).stdout.trim()) || 100;
  const before = await ticks();
  return async (requests) => ((await ticks()) - before) / clockTicks * 1e6 / requests;
}

/** Pids of every descendant of `pid`, so nothing is left behind if a parent is killed. */
async function descendants(pid: number): Promise<number[]> {
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

// ---------------------------------------------------------------- child processes

const stopAll = new AbortController();
const children = new Set<Child>();

/** A long-running child (backend, sluice, nginx, haproxy) whose output is drained and kept. */
class Child {
  readonly proc: Deno.ChildProcess;
  readonly tail: string[] = [];
  readonly status: Promise<Deno.CommandStatus>;
  exited = false;
  #listeners = new Set<(line: string) => void>();

  constructor(
    readonly name: string,
    cmd: string,
    args: string[],
    extra: { cwd?: string; env?: Record<string, string>; core?: 0 | 1 } = {},
  ) {
    if (extra.core !== undefined) [cmd, args] = pinned(extra.core, cmd, args);
    this.proc = new Deno.Command(cmd, {
      args,
      cwd: extra.cwd,
      env: extra.env,
      stdin: "null",
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

  /** Waits for `count` output lines matching `re`; rejects on exit or timeout. */
  waitForLines(re: RegExp, count: number, timeoutMs: number): Promise<string[]> {
    const seen = this.tail.filter((l) => re.test(l));
    if (seen.length >= count) return Promise.resolve(seen.slice(0, count));
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
        () => finish(new Error(`${this.name}: not ready after ${timeoutMs} ms${this.#last()}`)),
        timeoutMs,
      );
      this.#listeners.add(listener);
      this.status.then((s) => finish(new Error(`${this.name} exited (${s.code})${this.#last()}`)));
    });
  }

  #last(): string {
    return this.tail.length ? `; last output:\n    ${this.tail.slice(-8).join("\n    ")}` : "";
  }

  /** Why it is not usable, if it has exited. */
  failure(): string | undefined {
    return this.exited ? `${this.name} exited${this.#last()}` : undefined;
  }

  /** SIGTERM, then SIGKILL (with its descendants) after a grace period. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.exited) return;
    const kids = await descendants(this.proc.pid);
    try {
      this.proc.kill("SIGTERM");
    } catch { /* already gone */ }
    if (!(await within(this.status, graceMs))) {
      log(`${this.name} ignored SIGTERM for ${graceMs} ms; killing it`);
      try {
        this.proc.kill("SIGKILL");
      } catch { /* already gone */ }
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

async function stopChildren(): Promise<void> {
  await Promise.all([...children].map((c) => c.stop()));
}

// ---------------------------------------------------------------- load generators

interface LoadResult {
  rps: number;
  p50: number; // ms
  p99: number; // ms
  requests: number;
  non2xx: number;
  errors: number; // socket errors / timeouts
  errorText: string;
  /** CPU time the proxy's processes used per request during the run, µs (proxy rows only). */
  cpuUs?: number;
}

interface LoadGen {
  name: string;
  version: string;
  settings(seconds: number): string;
  measure(url: string, seconds: number): Promise<LoadResult>;
}

function toMs(value: string, unit: string): number {
  const n = Number(value);
  switch (unit) {
    case "us":
      return n / 1000;
    case "ms":
      return n;
    case "s":
      return n * 1000;
    case "m":
      return n * 60_000;
    case "h":
      return n * 3_600_000;
  }
  return NaN;
}

/** Parses wrk's `--latency` report. */
export function parseWrk(text: string): LoadResult {
  const num = (re: RegExp) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : NaN;
  };
  const pct = (p: number) => {
    const m = new RegExp(`^\\s*${p}(?:\\.0+)?%\\s+([\\d.]+)(us|ms|s|m|h)\\s*$`, "m").exec(text);
    return m ? toMs(m[1], m[2]) : NaN;
  };
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  const errors = socket ? socket.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(text);
  return {
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    p50: pct(50),
    p99: pct(99),
    requests: num(/(\d+) requests in /),
    non2xx: non2xx ? Number(non2xx[1]) : 0,
    errors,
    errorText: socket ? socket[0] : "",
  };
}

function wrkGen(path: string, version: string): LoadGen {
  const args = (seconds: number) => [
    `-t${THREADS}`,
    `-c${CONNECTIONS}`,
    `-d${seconds}s`,
    "--latency",
  ];
  return {
    name: "wrk",
    version,
    settings: (s) => `wrk ${args(s).join(" ")}`,
    async measure(url, seconds) {
      const [cmd, wrkArgs] = pinned(0, path, [...args(seconds), url]);
      const out = await run(cmd, wrkArgs, (seconds + 15) * 1000);
      if (!out.ok) {
        throw new Error(`wrk failed (${out.code}): ${(out.stderr || out.stdout).trim()}`);
      }
      const result = parseWrk(out.stdout);
      if (!Number.isFinite(result.rps)) throw new Error(`cannot read wrk output:\n${out.stdout}`);
      return result;
    },
  };
}

function autocannonGen(): LoadGen {
  const args = (seconds: number) => ["-c", String(CONNECTIONS), "-d", String(seconds)];
  return {
    name: "autocannon",
    version: AUTOCANNON.slice(AUTOCANNON.lastIndexOf("@") + 1),
    settings: (s) => `autocannon ${args(s).join(" ")} (under Deno, one JS thread)`,
    async measure(url, seconds) {
      // --no-config/--no-lock and a temp cwd: leave the project's deno.json and deno.lock alone.
      const out = await run(
        Deno.execPath(),
        [
          "run",
          "--no-config",
          "--no-lock",
          "--allow-all",
          AUTOCANNON,
          ...args(seconds),
          "--json",
          url,
        ],
        (seconds + 90) * 1000,
        { cwd: tmp },
      );
      const start = out.stdout.indexOf("{");
      if (!out.ok || start < 0) {
        throw new Error(`autocannon failed (${out.code}): ${out.stderr.trim().slice(-500)}`);
      }
      const r = JSON.parse(out.stdout.slice(start));
      return {
        rps: r.requests.average,
        p50: r.latency.p50,
        p99: r.latency.p99,
        requests: r.requests.total,
        non2xx: r.non2xx ?? 0,
        errors: (r.errors ?? 0) + (r.timeouts ?? 0),
        errorText: `errors ${r.errors ?? 0}, timeouts ${r.timeouts ?? 0}`,
      };
    },
  };
}

// ---------------------------------------------------------------- targets

interface Target {
  url: string;
  child?: Child;
}

let tmp = "";
let backendPorts: number[] = [];
const backendUrls = () => backendPorts.map((p) => `http://127.0.0.1:${p}`);

const sluicePerms = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env=LOG_TOKENS,LOG_STREAM",
];

async function startBackends(): Promise<void> {
  backendPorts = [freePort(), freePort(), freePort()];
  const groups = BACKEND_PROCS === 1 ? [backendPorts] : backendPorts.map((p) => [p]);
  await Promise.all(groups.map(async (ports, i) => {
    const child = new Child(`backend${BACKEND_PROCS === 1 ? "s" : i + 1}`, Deno.execPath(), [
      "run",
      "--allow-net",
      `${ROOT}/backend.ts`,
      "--ports",
      ports.join(","),
    ], { cwd: ROOT, core: 0 });
    await child.waitForLines(/^backend listening on /, ports.length, 60_000);
  }));
}

/** sluice with `strategy`; with `accessLog`, writing a JSON access log to that file in the temp dir. */
function startSluice(strategy: string, accessLog?: string): Target {
  const port = freePort();
  let args: string[];
  if (accessLog) {
    // The same settings as the flag rows, plus the access log: only a file can set accessLog.
    const config = {
      listen: { host: "127.0.0.1", port },
      strategy,
      backends: backendUrls().map((url) => ({ url })),
      log: { level: "warn" },
      accessLog: { format: "json", path: `${tmp}/${accessLog}` },
    };
    Deno.writeTextFileSync(`${tmp}/${accessLog}.json`, JSON.stringify(config, null, 2));
    args = ["--config", `${tmp}/${accessLog}.json`];
  } else {
    args = ["--host", "127.0.0.1", "--port", String(port), "--strategy", strategy];
    for (const url of backendUrls()) args.push("--backend", url);
    args.push("--log-level", "warn");
  }
  const child = new Child(`sluice (${strategy})`, Deno.execPath(), [
    "run",
    ...sluicePerms,
    `${ROOT}/main.ts`,
    ...args,
  ], { cwd: ROOT, core: 1 });
  return { url: `http://127.0.0.1:${port}/`, child };
}

function fill(template: string, slots: Record<string, string>): string {
  return template.replace(/\{\{(\w+)\}\}/g, (_, k) => {
    if (!(k in slots)) throw new Error(`template slot {{${k}}} has no value`);
    return slots[k];
  });
}

async function startNginx(bin: string, workers: string): Promise<Target> {
  const dir = `${tmp}/nginx-${workers}`;
  await Deno.mkdir(dir, { recursive: true });
  // As root, nginx workers run as an unprivileged user: let them reach the temp dirs.
  await Deno.chmod(tmp, 0o755);
  await Deno.chmod(dir, 0o755);
  const port = freePort();
  const conf = fill(await Deno.readTextFile(`${ROOT}/bench/nginx.conf.template`), {
    WORKERS: workers,
    DIR: dir,
    PORT: String(port),
    SERVERS: backendPorts.map((p) => `    server 127.0.0.1:${p};`).join("\n"),
  });
  await Deno.writeTextFile(`${dir}/nginx.conf`, conf);
  const args = ["-p", dir, "-e", `${dir}/error.log`, "-c", `${dir}/nginx.conf`];
  const test = await run(bin, ["-t", ...args], 10_000);
  if (!test.ok) throw new Error(`nginx -t rejected the config:\n${test.stderr.trim()}`);
  // One worker shares core 1 like every other proxy; "auto" gets the whole machine.
  const child = new Child(`nginx (${workers})`, bin, args, workers === "1" ? { core: 1 } : {});
  return { url: `http://127.0.0.1:${port}/`, child };
}

async function startHaproxy(bin: string): Promise<Target> {
  const port = freePort();
  const cfg = fill(await Deno.readTextFile(`${ROOT}/bench/haproxy.cfg.template`), {
    THREADS: "1",
    PORT: String(port),
    SERVERS: backendPorts.map((p, i) => `  server b${i + 1} 127.0.0.1:${p}`).join("\n"),
  });
  await Deno.writeTextFile(`${tmp}/haproxy.cfg`, cfg);
  const child = new Child("haproxy", bin, ["-db", "-f", `${tmp}/haproxy.cfg`], { core: 1 });
  return { url: `http://127.0.0.1:${port}/`, child };
}

/** Waits until `url` answers 200 with a backend greeting; returns the backend ports seen in 6 requests. */
async function ready(target: Target, timeoutMs: number): Promise<Set<number>> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    const dead = target.child?.failure();
    if (dead) throw new Error(dead);
    try {
      const res = await fetch(target.url, { signal: AbortSignal.timeout(2000) });
      const body = await res.text();
      if (res.status === 200 && HELLO.test(body)) break;
      last = `HTTP ${res.status}: ${body.slice(0, 80)}`;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline || stopAll.signal.aborted) {
      throw new Error(`${target.url} not ready after ${timeoutMs} ms (${last})`);
    }
    await sleep(100, stopAll.signal);
  }
  const seen = new Set<number>();
  for (let i = 0; i < 6; i++) {
    const res = await fetch(target.url, { signal: AbortSignal.timeout(2000) });
    const body = await res.text();
    const m = HELLO.exec(body);
    if (res.status !== 200 || !m) throw new Error(`${target.url}: HTTP ${res.status}: ${body}`);
    seen.add(Number(m[1]));
  }
  return seen;
}

// ---------------------------------------------------------------- rows

interface Row {
  id: string;
  label: string;
  group: "direct" | "sluice" | "nginx" | "haproxy";
  balanced: boolean;
  start: () => Promise<Target> | Target;
  /** One per round; `result` is the median by requests/s. */
  runs: LoadResult[];
  result?: LoadResult;
  /** Requests sent in the last round, warm-up included. */
  sent: number;
  skipped?: string;
  issues: string[];
  notes: string[];
}

function row(
  id: string,
  label: string,
  group: Row["group"],
  start: Row["start"],
  balanced = true,
): Row {
  return { id, label, group, start, balanced, issues: [], notes: [], runs: [], sent: 0 };
}

/** Every request of the round (warm-up included) should have left one access-log line. */
async function checkAccessLog(r: Row): Promise<void> {
  const path = `${tmp}/access.log`;
  try {
    const text = await Deno.readTextFile(path);
    await Deno.remove(path);
    const lines = text.split("\n").filter(Boolean).length;
    const note = `${lines.toLocaleString("en-US")} access-log lines for ${
      r.sent.toLocaleString("en-US")
    } requests`;
    r.notes = r.notes.filter((n) => !n.includes("access-log lines"));
    r.notes.push(note);
    if (lines < r.sent) r.issues.push(`missing access-log lines: ${note}`);
  } catch (err) {
    r.issues.push(`no access log written (${(err as Error).name})`);
  }
}

async function measureRow(r: Row, gen: LoadGen): Promise<void> {
  log(`row ${r.id}: ${r.label}`);
  let target: Target | undefined;
  try {
    target = await r.start();
    const seen = await ready(target, 60_000);
    const note = `6 probe requests reached ${seen.size}/${backendPorts.length} backends`;
    if (r.balanced && seen.size < backendPorts.length && !r.notes.includes(note)) {
      r.notes.push(note);
    }
    const warm = WARMUP > 0 ? await gen.measure(target.url, WARMUP) : undefined;
    // The proxy's own CPU per request: unlike throughput, it does not hit the backends' ceiling.
    const cpu = r.group !== "direct" && target.child
      ? await cpuMeter(target.child.proc.pid)
      : undefined;
    const res = await gen.measure(target.url, DURATION);
    if (cpu) res.cpuUs = await cpu(res.requests);
    r.runs.push(res);
    r.sent = (warm?.requests ?? 0) + res.requests;
    const sorted = [...r.runs].sort((a, b) => a.rps - b.rps);
    r.result = sorted[Math.floor((sorted.length - 1) / 2)];
    const round = ROUNDS > 1 ? `round ${r.runs.length}: ` : "";
    if (res.non2xx > 0) r.issues.push(`${round}${res.non2xx} non-2xx/3xx responses`);
    if (res.errors > 0) r.issues.push(round + res.errorText);
    const dead = target.child?.failure();
    if (dead) r.issues.push(dead);
    log(
      `  ${fmtRps(res.rps)} req/s, p50 ${fmtMs(res.p50)}, p99 ${fmtMs(res.p99)}` +
        (res.cpuUs !== undefined ? `, ${fmtCpu(res.cpuUs)} CPU per request` : "") +
        (r.issues.length ? `  [${r.issues.join("; ")}]` : ""),
    );
  } catch (err) {
    if (stopAll.signal.aborted) throw err;
    r.skipped = `failed: ${(err as Error).message}`;
    log(`  ${r.skipped}`);
  } finally {
    await target?.child?.stop();
  }
}

/** One round of two proxies loaded at once on the same core. */
interface Pairing {
  a: LoadResult;
  b: LoadResult;
}

/**
 * Runs two proxies side by side, both pinned to core 1, each under its own load generator: a
 * slow phase of the machine then hits both alike, so their CPU per request compares fairly
 * even when sequential rows do not.
 */
async function measurePairing(
  names: [string, string],
  start: () => Promise<[Target, Target]>,
  gen: LoadGen,
): Promise<Pairing | undefined> {
  log(`same core: ${names[0]} and ${names[1]} at once`);
  const targets: Target[] = [];
  try {
    targets.push(...await start());
    for (const t of targets) await ready(t, 60_000);
    if (WARMUP > 0) await Promise.all(targets.map((t) => gen.measure(t.url, WARMUP)));
    const cpu = await Promise.all(targets.map((t) => cpuMeter(t.child!.proc.pid)));
    const [a, b] = await Promise.all(targets.map((t) => gen.measure(t.url, DURATION)));
    [a.cpuUs, b.cpuUs] = await Promise.all([cpu[0](a.requests), cpu[1](b.requests)]);
    log(
      `  ${names[0]} ${fmtRps(a.rps)} req/s, ${fmtCpu(a.cpuUs)}; ` +
        `${names[1]} ${fmtRps(b.rps)} req/s, ${fmtCpu(b.cpuUs)} (CPU per request)`,
    );
    return { a, b };
  } catch (err) {
    if (stopAll.signal.aborted) throw err;
    log(`  failed: ${(err as Error).message}`);
    return undefined;
  } finally {
    await Promise.all(targets.map((t) => t.child?.stop()));
  }
}

// ---------------------------------------------------------------- report

const fmtRps = (n: number) => Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "?";
const fmtMs = (n: number) =>
  !Number.isFinite(n) ? "?" : `${n < 10 ? n.toFixed(2) : n.toFixed(1)} ms`;
const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
const fmtCpu = (us: number | undefined) => us === undefined ? "" : `${us.toFixed(1)} µs`;
/** Median CPU per request over a row's rounds. */
function cpuOf(r: Row | undefined): number | undefined {
  const values = (r?.runs ?? []).flatMap((x) => x.cpuUs === undefined ? [] : [x.cpuUs]);
  values.sort((a, b) => a - b);
  return values.length ? values[Math.floor((values.length - 1) / 2)] : undefined;
}

async function versionOf(bin: string | undefined, args: string[], re: RegExp): Promise<string> {
  if (!bin) return "not installed";
  const out = await run(bin, args, 5000);
  const m = re.exec(out.stdout + out.stderr);
  return m ? m[1] : "unknown";
}

async function machine(): Promise<{ cpu: string; nproc: number; load: string }> {
  const info = await procRead("/proc/cpuinfo");
  const cpu = /^model name\s*:\s*(.+)$/m.exec(info)?.[1].trim() ?? "unknown CPU";
  const load = (await procRead("/proc/loadavg")).split(" ").slice(0, 3).join(" ") || "?";
  return { cpu, nproc: navigator.hardwareConcurrency, load };
}

// ---------------------------------------------------------------- setup: install tools

async function isRoot(): Promise<boolean> {
  return (await run("id", ["-u"], 5000, { abortable: false })).stdout.trim() === "0";
}

/** `apt-get install -y` the missing packages (update first if that fails); never throws. */
async function aptInstall(packages: string[]): Promise<void> {
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

// ---------------------------------------------------------------- main

async function main(): Promise<number> {
  let wrk = await which("wrk");
  let nginx = await which("nginx");
  const missing = [...(wrk ? [] : ["wrk"]), ...(nginx ? [] : ["nginx"])];
  if (missing.length && !opts["no-install"]) {
    await aptInstall(missing);
    wrk = await which("wrk");
    nginx = await which("nginx");
  }
  const haproxy = await which("haproxy");

  let gen: LoadGen;
  if (opts.loadgen !== "autocannon" && wrk) {
    gen = wrkGen(wrk, await versionOf(wrk, ["-v"], /^wrk (\S+)/m));
  } else if (opts.loadgen === "wrk") {
    log("wrk is not installed (and could not be installed); load generator missing");
    return 1;
  } else {
    log(`${opts.loadgen ? "using" : "wrk is missing; falling back to"} ${AUTOCANNON}`);
    gen = autocannonGen();
  }

  const started = Date.now();
  const watchdog = setTimeout(async () => {
    log(`time limit of ${TIME_LIMIT} s reached; stopping everything`);
    stopAll.abort();
    await stopChildren();
    Deno.exit(3);
  }, TIME_LIMIT * 1000);

  const host = await machine();
  tmp = await Deno.makeTempDir({ prefix: "sluice-bench-" });
  const rows: Row[] = [];
  const pairings: Pairing[] = [];
  const logPairings: Pairing[] = [];
  try {
    log(`starting ${BACKEND_PROCS} backend process(es) on 3 ports`);
    await startBackends();
    log(`backends on ${backendPorts.join(", ")}; measuring with ${gen.settings(DURATION)}`);

    const direct = () => ({ url: `${backendUrls()[0]}/` });
    rows.push(row("1", "direct to one backend (no proxy)", "direct", direct, false));
    rows.push(row("2", "sluice round-robin", "sluice", () => startSluice("round-robin")));
    rows.push(
      row(
        "3a",
        "sluice least-connections",
        "sluice",
        () => startSluice("least-connections"),
      ),
    );
    rows.push(row("3b", "sluice latency", "sluice", () => startSluice("latency"), false));
    rows.push(
      row(
        "4",
        "sluice round-robin + JSON access log",
        "sluice",
        () => startSluice("round-robin", "access.log"),
      ),
    );
    const nginxRow = (id: string, workers: string) =>
      row(id, `nginx round-robin, worker_processes ${workers}`, "nginx", () => {
        if (!nginx) throw new Error("unreachable");
        return startNginx(nginx, workers);
      });
    const n1 = nginxRow("5a", "1");
    const nAuto = nginxRow("5b", "auto");
    rows.push(n1, nAuto);
    if (!nginx) { for (const r of [n1, nAuto]) r.skipped = "skipped: nginx is not installed"; }
    const h = row("6", "HAProxy round-robin, nbthread 1", "haproxy", () => {
      if (!haproxy) throw new Error("unreachable");
      return startHaproxy(haproxy);
    });
    if (!haproxy) h.skipped = "skipped: haproxy is not installed (optional)";
    rows.push(h);

    for (let round = 1; round <= ROUNDS; round++) {
      if (ROUNDS > 1) log(`round ${round} of ${ROUNDS}`);
      for (const r of rows) {
        if (r.skipped) {
          if (round === 1) log(`row ${r.id}: ${r.skipped}`);
          continue;
        }
        const before = r.runs.length;
        await measureRow(r, gen);
        if (r.id === "4" && r.runs.length > before) await checkAccessLog(r);
      }
      if (PIN) {
        if (nginx) {
          const vsNginx = await measurePairing(
            ["sluice round-robin", "nginx (1 worker)"],
            async () => [startSluice("round-robin"), await startNginx(nginx, "1")],
            gen,
          );
          if (vsNginx) pairings.push(vsNginx);
        }
        const withLog = await measurePairing(
          ["sluice round-robin", "sluice round-robin + JSON access log"],
          () =>
            Promise.resolve([startSluice("round-robin"), startSluice("round-robin", "paired.log")]),
          gen,
        );
        await Deno.remove(`${tmp}/paired.log`).catch(() => {});
        if (withLog) logPairings.push(withLog);
      }
    }
    for (const r of rows) {
      if (r.runs.length > 1) {
        const rps = r.runs.map((x) => x.rps);
        r.notes.push(
          `median of ${rps.length}, ${fmtRps(Math.min(...rps))}–${fmtRps(Math.max(...rps))} req/s`,
        );
      }
    }
  } finally {
    clearTimeout(watchdog);
    await stopChildren();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }

  let md = await report(
    rows,
    pairings,
    logPairings,
    gen,
    host,
    nginx,
    haproxy,
    (Date.now() - started) / 1000,
  );
  if (!opts["no-write"]) {
    const dir = opts.out.slice(0, opts.out.lastIndexOf("/"));
    if (dir) await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(opts.out, md);
    // Keep `deno fmt --check` (deno task check) green: let deno fmt lay out the table.
    const fmt = await run(Deno.execPath(), ["fmt", "-q", opts.out], 30_000, { cwd: ROOT });
    if (fmt.ok) md = await Deno.readTextFile(opts.out);
    log(`wrote ${opts.out}`);
  }
  console.log(md);
  return rows.some((r) => r.issues.length || r.skipped?.startsWith("failed")) ? 1 : 0;
}

async function report(
  rows: Row[],
  pairings: Pairing[],
  logPairings: Pairing[],
  gen: LoadGen,
  host: { cpu: string; nproc: number; load: string },
  nginx: string | undefined,
  haproxy: string | undefined,
  seconds: number,
): Promise<string> {
  const get = (id: string) => rows.find((r) => r.id === id)?.result;
  const nginx1 = get("5a");
  const base = get("2");
  const load = (await machine()).load;
  const lines: string[] = [];
  lines.push("# sluice benchmark", "");
  lines.push(`- Date: ${new Date().toISOString().replace(/\.\d+Z$/, "Z")}`);
  lines.push(
    `- Machine: ${host.cpu}, nproc ${host.nproc}; load average ${host.load} before, ${load} after`,
  );
  lines.push(
    `- Versions: Deno ${Deno.version.deno}, nginx ${await versionOf(
      nginx,
      ["-v"],
      /nginx\/(\S+)/,
    )}, ` +
      `HAProxy ${await versionOf(haproxy, ["-v"], /version (\S+)/)}, ${gen.name} ${gen.version}`,
  );
  lines.push(
    `- Load: \`${gen.settings(DURATION)}\` per row after a ${WARMUP} s warm-up${
      ROUNDS > 1 ? `, ${ROUNDS} rounds (median)` : ""
    }, GET / on 127.0.0.1 ` +
      `(${seconds.toFixed(0)} s in all)`,
  );
  lines.push(
    `- Backends: ${
      BACKEND_PROCS === 1 ? "one `backend.ts` process serving 3 ports" : "3 `backend.ts` processes"
    }; every proxy balances over the same 3; sluice logs at warn`,
  );
  lines.push(
    PIN
      ? "- Cores: each proxy under test runs alone on core 1 (taskset); backends and the load " +
        "generator share core 0; nginx `auto` is not pinned. Compare rows, not absolute numbers."
      : "- Everything (load generator, proxy, backends) shares the same cores: compare rows, " +
        "not absolute numbers.",
  );
  lines.push("");
  lines.push(
    "| # | Target | Requests/s | p50 | p99 | vs nginx (1 worker) | CPU per request | Check |",
  );
  lines.push("|---|--------|-----------:|----:|----:|--------------------:|----------:|-------|");
  for (const r of rows) {
    const res = r.result;
    const vs = r.group === "sluice" && res && nginx1 ? pct(res.rps / nginx1.rps) : "";
    const check = r.skipped
      ? r.skipped.replace(/\|/g, "\\|").split("\n")[0]
      : r.issues.length
      ? `**FLAGGED**: ${r.issues.join("; ")}`
      : "ok, all 2xx";
    const notes = r.notes.length ? ` (${r.notes.join("; ")})` : "";
    lines.push(
      `| ${r.id} | ${r.label} | ${res ? fmtRps(res.rps) : "–"} | ${res ? fmtMs(res.p50) : "–"} | ${
        res ? fmtMs(res.p99) : "–"
      } | ${vs} | ${fmtCpu(cpuOf(r))} | ${check}${notes} |`,
    );
  }
  lines.push("");
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  const logged = get("4");
  const verdict = (cost: number) => `target < 15%: ${cost < 0.15 ? "**met**" : "**not met**"}`;
  if (base && logged) {
    const ratio = logged.rps / base.rps;
    const cost = 1 - ratio;
    lines.push(
      `- Access log, sequential rows: row 4 keeps ${pct(ratio)} of row 2's throughput (cost ${
        (cost * 100).toFixed(1)
      }%${logPairings.length ? "" : `; ${verdict(cost)}`}).`,
    );
  }
  if (logPairings.length) {
    // Throughput per core is the inverse of CPU per request.
    const costs = logPairings.map((p) => 1 - p.a.cpuUs! / p.b.cpuUs!);
    const cost = median([...costs]);
    lines.push(
      `- Access log, same core at once (sluice round-robin with and without the JSON access log ` +
        `pinned together to core 1; median of ${logPairings.length}): it costs ` +
        `**${(cost * 100).toFixed(1)}%** of the throughput per core (each round: ${
          costs.map((c) => `${(c * 100).toFixed(1)}%`).join(", ")
        }; ${verdict(cost)}).`,
    );
  }
  if (nginx1) {
    const parts = ["2", "3a", "3b"].flatMap((id) => {
      const res = get(id);
      return res ? [`row ${id} ${pct(res.rps / nginx1.rps)}`] : [];
    });
    if (parts.length) lines.push(`- sluice / nginx (1 worker) throughput: ${parts.join(", ")}.`);
  }
  const nginxCpu = cpuOf(rows.find((r) => r.id === "5a"));
  if (nginxCpu !== undefined) {
    const parts = ["2", "3a", "3b"].flatMap((id) => {
      const cpu = cpuOf(rows.find((r) => r.id === id));
      return cpu !== undefined ? [`row ${id} ${pct(nginxCpu / cpu)}`] : [];
    });
    if (parts.length) {
      lines.push(
        `- nginx (1 worker) CPU per request / sluice's, the throughput ratio when the proxy ` +
          `alone is the limit: ${parts.join(", ")}.`,
      );
    }
  }
  if (pairings.length) {
    const ratios = pairings.map((p) => p.b.cpuUs! / p.a.cpuUs!);
    lines.push(
      `- Same core at once (sluice round-robin and nginx with 1 worker pinned together to core 1, ` +
        `each under its own ${gen.name}; median of ${pairings.length}): sluice ${
          fmtCpu(median(pairings.map((p) => p.a.cpuUs!)))
        } and nginx ${fmtCpu(median(pairings.map((p) => p.b.cpuUs!)))} CPU per request: ` +
        `sluice does **${pct(median([...ratios]))}** of nginx's work per core (each round: ${
          ratios.map(pct).join(", ")
        }).`,
    );
  }
  const direct = get("1");
  if (direct && base) {
    lines.push(`- sluice round-robin / direct to one backend: ${pct(base.rps / direct.rps)}.`);
  }
  lines.push("");
  lines.push(
    "nginx runs `worker_processes 1` (and HAProxy `nbthread 1`) because sluice serves requests " +
      "from one JavaScript thread; row 5b shows nginx with one worker per core. All proxies keep " +
      'upstream connections alive (nginx: `keepalive 64`, HTTP/1.1, `Connection ""`, ' +
      "`keepalive_requests` raised to match sluice; access logs off).",
  );
  return lines.join("\n") + "\n";
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    log(`${signal}: stopping children`);
    stopAll.abort();
    await stopChildren();
    if (tmp) await Deno.remove(tmp, { recursive: true }).catch(() => {});
    Deno.exit(130);
  });
}

if (import.meta.main) {
  let code = 1;
  try {
    code = await main();
  } catch (err) {
    if (!stopAll.signal.aborted) log(`error: ${(err as Error).stack ?? err}`);
    await stopChildren();
  }
  Deno.exit(code);
}
