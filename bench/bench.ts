/**
 * `deno task bench`: sluice against nginx and HAProxy over the same backends, in one run.
 *
 *   deno task bench [--rounds 3] [--duration 8] [--warmup 5] [--connections 64] [--threads 2]
 *     [--only SECTIONS] [--skip SECTIONS] [--idle-connections 10000] [--body-size 256MB]
 *     [--paced-rate 3000] [--paced-connections 20] [--paced-seconds 8] [--no-install]
 *     [--no-write] [--no-pin] [--out docs/benchmark.md] [--time-limit SECONDS] [--soak]
 *
 * Sections (all by default): `throughput` (the table: sluice with 1 and 2 workers, nginx with 1
 * and 2 worker processes, HAProxy with 1 and 2 threads, and the feature rows: access log, ten
 * routes, a trivial hook, TLS, HTTP/2), `pairing` (proxies pinned to one core at once, for work per
 * core and the cost of each feature), `floors` (smaller Deno proxies built from fewer of sluice's
 * parts, `bench/floors/`, each paired with nginx the same way: where sluice's work per core goes),
 * `latency` (paced p50/p99 and one-connection latency), `body`
 * (256 MB through one connection each way), `idle` (memory per idle connection), `handshakes`
 * (full TLS handshakes per second). `--soak` runs `bench/soak.ts` instead.
 *
 * Every server runs as a child process on 127.0.0.1 and is stopped at the end, on error, on
 * SIGINT/SIGTERM and when the time limit is hit. The report goes to stdout and docs/benchmark.md.
 */
import { parseArgs } from "node:util";
import { type IdleResult, measureIdle } from "./idle.ts";
import { paced, type PacedResult, pooled } from "./paced.ts";
import { haproxyConfig, nginxConfig, type NginxSpec } from "./peers.ts";
import { keptPartOf, soakMain } from "./soak.ts";
import {
  Child,
  cpuMeter,
  freePort,
  log,
  median,
  memoryOf,
  procRead,
  run,
  sleep,
  startFlags,
  stopAll,
  stopChildren,
  tool,
} from "./proc.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const HELLO = /^Hello from backend server on port: (\d+)/;
const SECTIONS = [
  "throughput",
  "pairing",
  "floors",
  "latency",
  "body",
  "idle",
  "handshakes",
] as const;
type Section = typeof SECTIONS[number];

// ---------------------------------------------------------------- options

const { values: opts } = parseArgs({
  args: Deno.args,
  strict: true,
  options: {
    duration: { type: "string", default: "8" },
    warmup: { type: "string", default: "5" },
    connections: { type: "string", default: "64" },
    threads: { type: "string", default: "2" },
    rounds: { type: "string", default: "1" },
    only: { type: "string" },
    skip: { type: "string" },
    "idle-connections": { type: "string", default: "10000" },
    "body-size": { type: "string", default: "256" },
    "paced-rate": { type: "string", default: "3000" },
    "paced-connections": { type: "string", default: "20" },
    "paced-seconds": { type: "string", default: "8" },
    "no-install": { type: "boolean", default: false },
    "no-write": { type: "boolean", default: false },
    "no-pin": { type: "boolean", default: false },
    out: { type: "string", default: `${ROOT}/docs/benchmark.md` },
    "time-limit": { type: "string" },
    soak: { type: "boolean", default: false },
    help: { type: "boolean", short: "h" },
  },
});
if (opts.help) {
  console.log(
    "usage: bench.ts [--rounds 1] [--duration 8] [--warmup 5] [--connections 64] [--threads 2]\n" +
      "  [--only SECTIONS] [--skip SECTIONS]   sections: " + SECTIONS.join(",") + "\n" +
      "  [--idle-connections 10000] [--body-size 256 (MB)] [--paced-rate 3000]\n" +
      "  [--paced-connections 20] [--paced-seconds 8] [--no-install] [--no-write] [--no-pin]\n" +
      "  [--out docs/benchmark.md] [--time-limit S] [--soak]   (durations in seconds)",
  );
  Deno.exit(0);
}
if (opts.soak) Deno.exit(await soakMain([]));
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
function sections(list: string | undefined, name: string): Set<Section> | undefined {
  if (list === undefined) return undefined;
  const out = new Set<Section>();
  for (const s of list.split(",").map((x) => x.trim()).filter(Boolean)) {
    if (!(SECTIONS as readonly string[]).includes(s)) {
      console.error(`bench: --${name}: unknown section ${s} (sections: ${SECTIONS.join(", ")})`);
      Deno.exit(2);
    }
    out.add(s as Section);
  }
  return out;
}
const DURATION = positive("duration", opts.duration);
const WARMUP = positive("warmup", opts.warmup, true);
const CONNECTIONS = positive("connections", opts.connections);
const THREADS = positive("threads", opts.threads);
const ROUNDS = positive("rounds", opts.rounds);
const IDLE_CONNECTIONS = positive("idle-connections", opts["idle-connections"]);
const BODY_MB = positive("body-size", opts["body-size"].replace(/mb$/i, ""));
const PACED_RATE = positive("paced-rate", opts["paced-rate"]);
const PACED_CONNECTIONS = positive("paced-connections", opts["paced-connections"]);
const PACED_SECONDS = positive("paced-seconds", opts["paced-seconds"]);
const ONLY = sections(opts.only, "only");
const SKIP = sections(opts.skip, "skip") ?? new Set<Section>();
const want = (s: Section) => (ONLY === undefined || ONLY.has(s)) && !SKIP.has(s);
const PIN = !opts["no-pin"] && navigator.hardwareConcurrency >= 2 &&
  (() => {
    try {
      return new Deno.Command("taskset", { args: ["-c", "0", "true"] }).outputSync().success;
    } catch {
      return false;
    }
  })();
/** About 6 minutes a round with every section (see docs/benchmark.md); the limit leaves slack. */
const TIME_LIMIT = opts["time-limit"] === undefined
  ? 180 + ROUNDS * 600
  : positive("time-limit", opts["time-limit"]);
if (PACED_RATE % PACED_CONNECTIONS !== 0) {
  console.error("bench: --paced-rate must be a multiple of --paced-connections");
  Deno.exit(2);
}

// ---------------------------------------------------------------- tools and state

interface Tools {
  wrk?: string;
  nginx?: string;
  haproxy?: string;
  h2load?: string;
  curl?: string;
  openssl?: string;
}
const tools: Tools = {};
let tmp = "";
let backend: Child | undefined;
let backendPorts: number[] = [];
const backendUrls = () => backendPorts.map((p) => `http://127.0.0.1:${p}`);
let cert: { cert: string; key: string } | undefined;
/** Why sluice has no `--workers` (undefined when it has). */
let noWorkers: string | undefined;

/** Runs `cmd` with the soft file-descriptor limit raised to the hard one (idle connections). */
function unlimited(cmd: string, args: string[]): [string, string[]] {
  return ["sh", ["-c", 'ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"', cmd, ...args]];
}

// ---------------------------------------------------------------- load generators

/** One measured run of a load generator. */
interface LoadResult {
  rps: number;
  p50: number; // ms
  p99: number; // ms
  requests: number;
  non2xx: number;
  errors: number;
  errorText: string;
  /** CPU time of the proxy's processes per request during the run, µs (proxy rows only). */
  cpuUs?: number;
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

/** Parses h2load's summary; percentiles come from its `--log-file` (µs per request). */
export function parseH2load(text: string, logFile = ""): LoadResult {
  const finished = /finished in ([\d.]+)s, ([\d.]+) req\/s/.exec(text);
  const reqs =
    /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/
      .exec(text);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(text);
  const latencies = logFile.split("\n").flatMap((l) => {
    const f = l.split("\t");
    return f.length >= 3 ? [Number(f[2])] : [];
  }).sort((a, b) => a - b);
  const q = (p: number) =>
    latencies.length
      ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] / 1000
      : NaN;
  const failed = reqs ? Number(reqs[5]) + Number(reqs[6]) + Number(reqs[7]) : 0;
  return {
    rps: finished ? Number(finished[2]) : NaN,
    p50: q(0.5),
    p99: q(0.99),
    requests: reqs ? Number(reqs[4]) : NaN,
    non2xx: codes ? Number(codes[2]) + Number(codes[3]) + Number(codes[4]) : 0,
    errors: failed,
    errorText: reqs ? `h2load: ${reqs[5]} failed, ${reqs[6]} errored, ${reqs[7]} timeout` : "",
  };
}

/** How a row is loaded. */
type LoadKind = "wrk" | "h2load";

/** `wrk -tT -cC -dS --latency URL`, on `cores` when set. */
async function wrk(
  url: string,
  seconds: number,
  extra: { cores?: string; threads?: number; connections?: number } = {},
): Promise<LoadResult> {
  const args = [
    `-t${extra.threads ?? THREADS}`,
    `-c${extra.connections ?? CONNECTIONS}`,
    `-d${seconds}s`,
    "--latency",
    url,
  ];
  const [cmd, all] = extra.cores ? ["taskset", ["-c", extra.cores, tools.wrk!, ...args]] : [
    tools.wrk!,
    args,
  ];
  const out = await run(cmd, all, (seconds + 20) * 1000);
  if (!out.ok) throw new Error(`wrk failed (${out.code}): ${(out.stderr || out.stdout).trim()}`);
  const result = parseWrk(out.stdout);
  if (!Number.isFinite(result.rps)) throw new Error(`cannot read wrk output:\n${out.stdout}`);
  return result;
}

/** h2load settings for the HTTP/2 rows: as many streams in flight as wrk has connections. */
const H2_CLIENTS = 8;
const h2Streams = () => Math.max(1, Math.round(CONNECTIONS / H2_CLIENTS));

/** HTTP/2 load with h2load over TLS (ALPN h2), `CONNECTIONS` streams in flight in all. */
async function h2load(url: string, seconds: number, cores?: string): Promise<LoadResult> {
  const logFile = `${tmp}/h2load.tsv`;
  const args = [
    `-t${THREADS}`,
    `-c${H2_CLIENTS}`,
    `-m${h2Streams()}`,
    `-D${seconds}`,
    `--log-file=${logFile}`,
    url,
  ];
  const [cmd, all] = cores ? ["taskset", ["-c", cores, tools.h2load!, ...args]] : [
    tools.h2load!,
    args,
  ];
  const out = await run(cmd, all, (seconds + 30) * 1000);
  const text = await Deno.readTextFile(logFile).catch(() => "");
  await Deno.remove(logFile).catch(() => {});
  const result = parseH2load(out.stdout, text);
  if (!Number.isFinite(result.rps)) {
    throw new Error(
      `h2load failed (${out.code}): ${(out.stderr || out.stdout).trim().slice(-400)}`,
    );
  }
  return result;
}

function measure(kind: LoadKind, url: string, seconds: number, cores?: string) {
  return kind === "wrk" ? wrk(url, seconds, { cores }) : h2load(url, seconds, cores);
}

// ---------------------------------------------------------------- targets

/** A server under test. */
interface Target {
  url: string;
  child?: Child;
}

/** Thrown when a row cannot run here (missing tool, config sluice rejects); `message` is why. */
class Skip extends Error {}

/** What `deno task start` runs sluice with. */
const SLUICE_PERMS = startFlags();

async function startBackends(): Promise<void> {
  backendPorts = [freePort(), freePort(), freePort()];
  await ensureBackends();
}

/** Moves the backends (every thread) to `cores`: core 0 for the pinned pairings, all otherwise. */
async function pinBackends(cores: string): Promise<void> {
  if (backend && PIN) {
    await run("taskset", ["-a", "-p", "-c", cores, String(backend.proc.pid)], 5000);
  }
}

/** What a sluice under test runs with. */
interface SluiceSpec {
  /** Short name for files and logs. */
  name: string;
  workers?: number;
  strategy?: string;
  /** Keys for a config file (listen, backends and log are filled in); flags are used without. */
  config?: (port: number) => Record<string, unknown>;
  https?: boolean;
  h2?: boolean;
  /** Path wrk requests. @default "/" */
  path?: string;
}

const plainConfig = (port: number) => ({
  listen: { host: "127.0.0.1", port },
  backends: backendUrls().map((url) => ({ url })),
  log: { level: "warn" },
});
const tlsListen = (port: number, h2: boolean) => ({
  listen: [{
    host: "127.0.0.1",
    port,
    tls: { certificates: [{ cert: cert!.cert, key: cert!.key }] },
    http2: h2,
  }],
  backends: backendUrls().map((url) => ({ url })),
  log: { level: "warn" },
});
/** Ten prefix routes to one named pool; wrk asks for the last-but-one, /r8. */
const ROUTES_PATH = "/r8";
const SPECS = {
  rr1: { name: "rr", strategy: "round-robin" },
  rr2: { name: "rr2", strategy: "round-robin", workers: 2 },
  lc: { name: "lc", strategy: "least-connections" },
  log: {
    name: "log",
    config: (port: number) => ({
      ...plainConfig(port),
      accessLog: { format: "json", path: `${tmp}/access-${port}.log` },
    }),
  },
  routes: {
    name: "routes",
    path: ROUTES_PATH,
    config: (port: number) => ({
      listen: { host: "127.0.0.1", port },
      pools: { a: { backends: backendUrls().map((url) => ({ url })) } },
      routes: [
        ...Array.from({ length: 9 }, (_, i) => ({ path: `/r${i}`, pool: "a" })),
        { path: "/", pool: "a" },
      ],
      log: { level: "warn" },
    }),
  },
  hook: {
    name: "hook",
    config: (port: number) => ({ ...plainConfig(port), hooks: "./hooks.ts" }),
  },
  tls: { name: "tls", https: true, config: (port: number) => tlsListen(port, false) },
  h2: { name: "h2", https: true, h2: true, config: (port: number) => tlsListen(port, true) },
} satisfies Record<string, SluiceSpec>;

/** How the same-core pairing names each feature, and its cost target (issues 9 and 10). */
const FEATURE_LABELS = {
  log: "the JSON access log",
  routes: "ten routes",
  hook: "a trivial hook",
} as const;
const FEATURE_TARGETS: Record<string, number | undefined> = {
  [FEATURE_LABELS.log]: 0.10,
  [FEATURE_LABELS.routes]: 0.10,
};

const HOOKS_TS = "export default { onRequest(_req: unknown, _ctx: unknown) {} };\n";

/** Writes the spec's config for `port`; returns its path. */
async function writeConfig(spec: SluiceSpec, port: number): Promise<string> {
  const path = `${tmp}/${spec.name}-${port}.json`;
  await Deno.writeTextFile(path, JSON.stringify(spec.config!(port), null, 2));
  return path;
}

/** Why sluice rejects the spec's config (`main.ts --check -c FILE` exits 1), or undefined. */
async function checkSluice(spec: SluiceSpec): Promise<string | undefined> {
  if ((spec.https || spec.h2) && !cert) return "no TLS certificate (openssl is missing)";
  if (spec.workers && spec.workers > 1 && noWorkers) return noWorkers;
  if (!spec.config) return undefined;
  const path = await writeConfig(spec, freePort());
  const out = await run(
    Deno.execPath(),
    ["run", ...SLUICE_PERMS, `${ROOT}/main.ts`, "--check", "-c", path],
    60_000,
    { cwd: ROOT },
  );
  await Deno.remove(path).catch(() => {});
  if (out.ok) return undefined;
  const why = (out.stderr + "\n" + out.stdout).split("\n").map((l) => l.trim())
    .filter((l) => l && !l.startsWith("{") && !/invalid configuration in /.test(l))
    .slice(0, 3).join("; ");
  return `sluice --check rejects the config: ${why || `exit ${out.code}`}`;
}

function startSluice(spec: SluiceSpec, cores?: string): Target {
  const port = freePort();
  let args: string[];
  if (spec.config) {
    args = ["--config", `${tmp}/${spec.name}-${port}.json`];
    Deno.writeTextFileSync(args[1], JSON.stringify(spec.config(port), null, 2));
  } else {
    args = ["--host", "127.0.0.1", "--port", String(port), "--strategy", spec.strategy!];
    for (const url of backendUrls()) args.push("--backend", url);
    args.push("--log-level", "warn");
    if (spec.workers) args.push("--workers", String(spec.workers));
  }
  const [cmd, all] = unlimited(Deno.execPath(), [
    "run",
    ...SLUICE_PERMS,
    `${ROOT}/main.ts`,
    ...args,
  ]);
  const child = new Child(`sluice (${spec.name})`, cmd, all, { cwd: ROOT, cores });
  const scheme = spec.https ? "https" : "http";
  return { url: `${scheme}://127.0.0.1:${port}${spec.path ?? "/"}`, child };
}

/** The floor proxies of `bench/floors/`, least work first: what each pairing row is called. */
const FLOORS = {
  minimal: "minimal Deno proxy (bytes copied, nothing parsed or added)",
  bytes: "sluice's checks and additions on bytes, no layers (`bytes.ts`)",
  flat: "sluice's parsers and head builders, no layers (`flat.ts`)",
} as const;

/** Starts a floor proxy of `bench/floors/` with sluice's V8 flags. */
function startFloor(name: keyof typeof FLOORS, cores?: string): Target {
  const port = freePort();
  const v8 = SLUICE_PERMS.filter((flag) => flag.startsWith("--v8-flags="));
  const [cmd, all] = unlimited(Deno.execPath(), [
    "run",
    ...v8,
    "--allow-net",
    `${ROOT}/bench/floors/${name}.ts`,
    String(port),
    ...backendPorts.map(String),
  ]);
  const child = new Child(`floor (${name})`, cmd, all, { cwd: ROOT, cores });
  return { url: `http://127.0.0.1:${port}/`, child };
}

async function startNginx(spec: NginxSpec, cores?: string): Promise<Target> {
  if (!tools.nginx) throw new Skip("nginx is not installed");
  if ((spec.tls || spec.h2) && !cert) throw new Skip("no TLS certificate (openssl is missing)");
  const port = freePort();
  const dir = `${tmp}/nginx-${port}`;
  await Deno.mkdir(dir, { recursive: true });
  // As root, nginx workers run as an unprivileged user: let them reach the temp dirs.
  await Deno.chmod(tmp, 0o755);
  await Deno.chmod(dir, 0o755);
  const conf = await nginxConfig(spec, { port, backendPorts, dir, cert });
  await Deno.writeTextFile(`${dir}/nginx.conf`, conf);
  const args = ["-p", dir, "-e", `${dir}/error.log`, "-c", `${dir}/nginx.conf`];
  const test = await run(tools.nginx, ["-t", ...args], 10_000);
  if (!test.ok) throw new Error(`nginx -t rejected the config:\n${test.stderr.trim()}`);
  const [cmd, all] = unlimited(tools.nginx, args);
  const child = new Child(`nginx (${spec.workers})`, cmd, all, { cores });
  const scheme = spec.tls || spec.h2 ? "https" : "http";
  return { url: `${scheme}://127.0.0.1:${port}${spec.routes ? ROUTES_PATH : "/"}`, child };
}

async function startHaproxy(threads: number, cores?: string): Promise<Target> {
  if (!tools.haproxy) throw new Skip("haproxy is not installed");
  const port = freePort();
  const cfg = await haproxyConfig(threads, { port, backendPorts });
  await Deno.writeTextFile(`${tmp}/haproxy-${port}.cfg`, cfg);
  const child = new Child(`haproxy (${threads})`, tools.haproxy, [
    "-db",
    "-f",
    `${tmp}/haproxy-${port}.cfg`,
  ], { cores });
  return { url: `http://127.0.0.1:${port}/`, child };
}

/** GET `url` with curl (any certificate; HTTP/2 when `h2`): status and body. */
async function curlGet(url: string, h2 = false): Promise<{ status: number; body: string }> {
  const out = await run(
    tools.curl!,
    [
      "-sk",
      "--max-time",
      "3",
      ...(h2 ? ["--http2"] : ["--http1.1"]),
      "-w",
      "\n%{http_code}",
      url,
    ],
    10_000,
    { abortable: false },
  );
  const nl = out.stdout.lastIndexOf("\n");
  return { status: Number(out.stdout.slice(nl + 1)) || 0, body: out.stdout.slice(0, nl) };
}

/** Waits until `url` answers 200 with a backend greeting; the backend ports seen in 6 requests. */
async function ready(target: Target, timeoutMs: number, h2 = false): Promise<Set<number>> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    const dead = target.child?.failure();
    if (dead) throw new Error(dead);
    const res = await curlGet(target.url, h2);
    if (res.status === 200 && HELLO.test(res.body)) break;
    last = res.status ? `HTTP ${res.status}: ${res.body.slice(0, 80)}` : "no answer";
    if (Date.now() > deadline || stopAll.signal.aborted) {
      throw new Error(`${target.url} not ready after ${timeoutMs} ms (${last})`);
    }
    await sleep(100);
  }
  const seen = new Set<number>();
  for (let i = 0; i < 6; i++) {
    const res = await curlGet(target.url, h2);
    const m = HELLO.exec(res.body);
    if (res.status !== 200 || !m) throw new Error(`${target.url}: HTTP ${res.status}: ${res.body}`);
    seen.add(Number(m[1]));
  }
  return seen;
}

// ---------------------------------------------------------------- rows

interface Row {
  id: string;
  label: string;
  group: "direct" | "sluice" | "nginx" | "haproxy";
  load: LoadKind;
  /** The row this one is compared with (its "vs" column). */
  vs?: string;
  balanced: boolean;
  start: () => Promise<Target> | Target;
  /** Called after each measured run (the access-log check). */
  after?: (r: Row, target: Target) => Promise<void>;
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
  extra: Partial<Pick<Row, "vs" | "balanced" | "load" | "after" | "skipped">> = {},
): Row {
  return {
    id,
    label,
    group,
    start,
    load: extra.load ?? "wrk",
    vs: extra.vs,
    balanced: extra.balanced ?? true,
    after: extra.after,
    skipped: extra.skipped,
    issues: [],
    notes: [],
    runs: [],
    sent: 0,
  };
}

/** Every request of the round (warm-up included) should have left one access-log line. */
async function checkAccessLog(r: Row, target: Target): Promise<void> {
  const port = new URL(target.url).port;
  const path = `${tmp}/access-${port}.log`;
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

/** Restarts the backends (same ports) if any of them does not answer; every row needs all three. */
async function ensureBackends(): Promise<void> {
  const answers = await Promise.all(backendUrls().map((u) => curlGet(`${u}/`)));
  if (!backend?.exited && answers.every((a) => a.status === 200)) return;
  if (backend) {
    log(`backends not answering (${answers.map((a) => a.status).join(", ")}); restarting them`);
  }
  await backend?.stop();
  backend = new Child("backends", Deno.execPath(), [
    "run",
    "--allow-net",
    `${ROOT}/bench/bench_backend.ts`,
    "--ports",
    backendPorts.join(","),
  ], { cwd: ROOT });
  await backend.waitForLines(/^backend listening on /, 3, 60_000);
}

async function measureRow(r: Row): Promise<void> {
  log(`row ${r.id}: ${r.label}`);
  let target: Target | undefined;
  try {
    await ensureBackends();
    target = await r.start();
    const seen = await ready(target, 60_000, r.load === "h2load");
    const note = `6 probe requests reached ${seen.size}/${backendPorts.length} backends`;
    if (r.balanced && seen.size < backendPorts.length && !r.notes.includes(note)) {
      r.notes.push(note);
    }
    const warm = WARMUP > 0 ? await measure(r.load, target.url, WARMUP) : undefined;
    // The proxy's own CPU per request: unlike throughput, it does not hit a shared ceiling.
    const cpu = r.group !== "direct" && target.child
      ? await cpuMeter(target.child.proc.pid)
      : undefined;
    const res = await measure(r.load, target.url, DURATION);
    if (cpu) res.cpuUs = await cpu(res.requests);
    r.runs.push(res);
    r.sent = (warm?.requests ?? 0) + res.requests + 7;
    const sorted = [...r.runs].sort((a, b) => a.rps - b.rps);
    r.result = sorted[Math.floor((sorted.length - 1) / 2)];
    const round = ROUNDS > 1 ? `round ${r.runs.length}: ` : "";
    if (res.non2xx > 0) r.issues.push(`${round}${res.non2xx} non-2xx/3xx responses`);
    if (res.errors > 0) r.issues.push(round + res.errorText);
    const dead = target.child?.failure();
    if (dead) r.issues.push(dead);
    if (r.after) await r.after(r, target);
    log(
      `  ${fmtRps(res.rps)} req/s, p50 ${fmtMs(res.p50)}, p99 ${fmtMs(res.p99)}` +
        (res.cpuUs !== undefined ? `, ${fmtCpu(res.cpuUs)} CPU per request` : "") +
        (r.issues.length ? `  [${r.issues.join("; ")}]` : ""),
    );
  } catch (err) {
    if (stopAll.signal.aborted) throw err;
    r.skipped = err instanceof Skip
      ? `skipped: ${err.message}`
      : `failed: ${(err as Error).message}`;
    log(`  ${r.skipped}`);
  } finally {
    await target?.child?.stop();
  }
}

// ---------------------------------------------------------------- same-core pairings

/** One round of proxies loaded at once on the same core: CPU µs per request of each. */
type Pairing = (LoadResult | undefined)[];

/**
 * Runs proxies side by side, all pinned to core 1, each under its own wrk on core 0 (with the
 * backends): a slow phase of the machine then hits them alike, so their CPU per request compares
 * fairly even when sequential rows do not.
 */
async function measurePairing(
  names: string[],
  starts: (() => Promise<Target> | Target)[],
): Promise<Pairing | undefined> {
  log(`same core: ${names.join(", ")} at once`);
  const targets: Target[] = [];
  try {
    for (const start of starts) targets.push(await start());
    for (const t of targets) await ready(t, 60_000);
    if (WARMUP > 0) await Promise.all(targets.map((t) => wrk(t.url, WARMUP, { cores: "0" })));
    const cpu = await Promise.all(targets.map((t) => cpuMeter(t.child!.proc.pid)));
    const results = await Promise.all(targets.map((t) => wrk(t.url, DURATION, { cores: "0" })));
    await Promise.all(results.map(async (r, i) => r.cpuUs = await cpu[i](r.requests)));
    log(
      "  " + results.map((r, i) => `${names[i]} ${fmtRps(r.rps)} req/s, ${fmtCpu(r.cpuUs)}`)
        .join("; ") +
        " (CPU per request)",
    );
    return results;
  } catch (err) {
    if (stopAll.signal.aborted) throw err;
    log(`  failed: ${(err as Error).message}`);
    return undefined;
  } finally {
    await Promise.all(targets.map((t) => t.child?.stop()));
  }
}

/**
 * A pairing a target is judged on, run twice, the second time started in the other order, and
 * pooled (all the CPU over all the requests): a feature's cost is a few per cent, about the spread
 * of one pairing on a shared host, so each round's figure rests on two.
 */
async function measurePairingTwice(
  names: [string, string],
  starts: [() => Promise<Target> | Target, () => Promise<Target> | Target],
): Promise<Pairing | undefined> {
  const first = await measurePairing(names, starts);
  const second = await measurePairing([names[1], names[0]], [starts[1], starts[0]]);
  if (!first || !second) return first ?? second?.toReversed();
  return [bothRuns(first[0], second[1]), bothRuns(first[1], second[0])];
}

/** Two runs of one proxy as one: CPU per request weighted by requests, rates averaged. */
function bothRuns(a: LoadResult | undefined, b: LoadResult | undefined): LoadResult | undefined {
  if (!a || !b) return a ?? b;
  const requests = a.requests + b.requests;
  return {
    rps: (a.rps + b.rps) / 2,
    p50: (a.p50 + b.p50) / 2,
    p99: Math.max(a.p99, b.p99),
    requests,
    non2xx: a.non2xx + b.non2xx,
    errors: a.errors + b.errors,
    errorText: [a.errorText, b.errorText].filter(Boolean).join("; "),
    cpuUs: a.cpuUs === undefined || b.cpuUs === undefined
      ? undefined
      : (a.cpuUs * a.requests + b.cpuUs * b.requests) / requests,
  };
}

// ---------------------------------------------------------------- latency and bodies

interface LatencyRound {
  paced: Record<string, PacedResult>;
  /** wrk -t1 -c1: µs per request (1 / rate) and p50 ms. */
  one: Record<string, { us: number; p50: number }>;
}
interface BodyRound {
  /** MB/s (10^6 bytes) per target. */
  download: Record<string, number>;
  upload: Record<string, number>;
  /** sluice RSS before the transfers and its peak (VmHWM) after them, bytes. */
  sluiceRss?: number;
  sluicePeak?: number;
  issues: string[];
}

let bodyFile = "";
/** The untimed transfer before each timed one, MB (see `latencyAndBody`). */
const BODY_WARMUP_MB = 32;
let warmupFile = "";

/** Writes an `mb` MB file at `path` (for uploads); returns `path`. */
async function filledFile(path: string, mb: number): Promise<string> {
  const f = await Deno.open(path, { write: true, create: true });
  const block = new Uint8Array(1_000_000).fill(0x62);
  for (let i = 0; i < mb; i++) await f.write(block);
  f.close();
  return path;
}

/** Transfers `mb` MB down (GET /bytes/N) and up (POST `file`) through one connection each; MB/s. */
async function transfer(
  base: string,
  mb = BODY_MB,
  file = bodyFile,
): Promise<{ down: number; up: number; issues: string[] }> {
  const bytes = mb * 1_000_000;
  const issues: string[] = [];
  const fmt = "\n%{http_code} %{size_download} %{size_upload} %{time_total}";
  const down = await run(tools.curl!, [
    "-s",
    "--http1.1",
    "-o",
    "/dev/null",
    "-w",
    fmt,
    `${base}/bytes/${bytes}`,
  ], 300_000);
  const [dCode, dSize, , dTime] = down.stdout.trim().split(" ").map(Number);
  if (dCode !== 200 || dSize !== bytes) issues.push(`download: HTTP ${dCode}, ${dSize} bytes`);
  const up = await run(tools.curl!, [
    "-s",
    "--http1.1",
    "-X",
    "POST",
    "-H",
    "Expect:",
    "-T",
    file,
    "-w",
    fmt,
    `${base}/upload`,
  ], 300_000);
  const lines = up.stdout.trim().split("\n");
  const [uCode, , uSize, uTime] = lines[lines.length - 1].split(" ").map(Number);
  if (uCode !== 200 || uSize !== bytes || !lines[0].includes(`received ${bytes}`)) {
    issues.push(
      `upload: HTTP ${uCode}, ${uSize} bytes sent, backend said ${lines[0].slice(0, 40)}`,
    );
  }
  return { down: bytes / dTime / 1e6, up: bytes / uTime / 1e6, issues };
}

/** Seconds of one paced slice (see `pacedRound`). */
const PACED_SLICE = 2;

/**
 * The paced runs of one round: the direct target once, for reference; then the proxies in
 * slices of `PACED_SLICE` seconds that take turns (sluice, nginx, nginx, sluice, …), each
 * proxy's slices pooled into its result. Run one after the other, each proxy met a different
 * phase of the shared machine, and single rounds' p99 ratios ranged over 0.7–2.1×.
 */
async function pacedRound(targets: [string, Target][], round: LatencyRound): Promise<void> {
  const options = {
    rate: PACED_RATE,
    connections: PACED_CONNECTIONS,
    warmup: 1,
    dir: tmp,
  };
  const report = (name: string, r: PacedResult) =>
    log(
      `  ${name}: p50 ${fmtMs(r.p50)}, p99 ${fmtMs(r.p99)}, ${
        fmtRps(r.rate)
      } req/s, ${r.failed} failed`,
    );
  const proxies = targets.filter(([name]) => name !== "direct");
  const direct = targets.find(([name]) => name === "direct")![1];
  log(`paced ${PACED_RATE} req/s over ${PACED_CONNECTIONS} connections: direct`);
  round.paced.direct = await paced(tools.h2load!, direct.url, {
    ...options,
    seconds: PACED_SECONDS,
  });
  report("direct", round.paced.direct);
  const slices = Math.max(1, Math.round(PACED_SECONDS / PACED_SLICE));
  const seconds = PACED_SECONDS / slices;
  log(
    `paced ${PACED_RATE} req/s over ${PACED_CONNECTIONS} connections: ` +
      `${proxies.map(([n]) => n).join(" and ")} in ${slices} turns of ${seconds} s each`,
  );
  const runs = new Map<string, PacedResult[]>(proxies.map(([name]) => [name, []]));
  for (let i = 0; i < slices; i++) {
    const order = i % 2 === 0 ? proxies : [...proxies].reverse();
    for (const [name, t] of order) {
      runs.get(name)!.push(await paced(tools.h2load!, t.url, { ...options, seconds }));
    }
  }
  for (const [name, results] of runs) {
    round.paced[name] = pooled(results);
    report(name, round.paced[name]);
  }
}

/** Paced latency, one-connection latency and body throughput for direct, sluice and nginx. */
async function latencyAndBody(
  latency: LatencyRound[],
  bodies: BodyRound[],
): Promise<void> {
  const targets: [string, Target][] = [["direct", { url: `${backendUrls()[0]}/` }]];
  try {
    const sluice = startSluice(SPECS.rr1);
    targets.push(["sluice", sluice]);
    await ready(sluice, 60_000);
    if (tools.nginx) {
      const nginx = await startNginx({ workers: 1 });
      targets.push(["nginx", nginx]);
      await ready(nginx, 60_000);
    }
    // Fresh processes: let V8 compile the hot paths before anything is timed.
    if (WARMUP > 0) { for (const [, t] of targets) await wrk(t.url, WARMUP); }
    if (want("latency")) {
      const round: LatencyRound = { paced: {}, one: {} };
      if (tools.h2load) await pacedRound(targets, round);
      for (const [name, t] of targets) {
        await wrk(t.url, 1, { threads: 1, connections: 1 });
        const one = await wrk(t.url, 5, { threads: 1, connections: 1 });
        round.one[name] = { us: 1e6 / one.rps, p50: one.p50 };
        log(`  one connection: ${name} ${(1e6 / one.rps).toFixed(0)} µs per request`);
      }
      latency.push(round);
    }
    if (want("body")) {
      const round: BodyRound = { download: {}, upload: {}, issues: [] };
      const sluice = targets.find(([n]) => n === "sluice")![1];
      round.sluiceRss = (await memoryOf(sluice.child!.proc.pid)).rss;
      for (const [name, t] of targets) {
        log(`body: ${BODY_MB} MB down and up through ${name}`);
        // The GET warm-up above leaves the streaming path cold (its responses arrive whole), and
        // a first transfer through a fresh sluice ran 10-25 % slower than the next ones.
        const warm = await transfer(new URL(t.url).origin, BODY_WARMUP_MB, warmupFile);
        round.issues.push(...warm.issues.map((i) => `${name} warm-up ${i}`));
        const r = await transfer(new URL(t.url).origin);
        round.download[name] = r.down;
        round.upload[name] = r.up;
        round.issues.push(...r.issues.map((i) => `${name} ${i}`));
        log(`  ${r.down.toFixed(0)} MB/s down, ${r.up.toFixed(0)} MB/s up ${r.issues.join("; ")}`);
      }
      round.sluicePeak = (await memoryOf(sluice.child!.proc.pid)).peak;
      bodies.push(round);
    }
  } finally {
    await Promise.all(targets.map(([, t]) => t.child?.stop()));
  }
}

// ---------------------------------------------------------------- idle memory

interface IdleRound {
  sluice?: IdleResult;
  nginx?: IdleResult;
  /** nginx's preallocated connection slot (worker_connections 20,000 against 1,024), bytes. */
  nginxSlot?: number;
  issues: string[];
}

async function idleRound(): Promise<IdleRound> {
  const round: IdleRound = { issues: [] };
  const options = { count: IDLE_CONNECTIONS };
  const one = async (name: string, start: () => Promise<Target> | Target) => {
    let t: Target | undefined;
    try {
      t = await start();
      await ready(t, 60_000);
      await wrk(t.url, 1, { threads: 1, connections: 4 });
      await sleep(1000);
      log(`idle: ${IDLE_CONNECTIONS.toLocaleString("en-US")} connections to ${name}`);
      const r = await measureIdle(ROOT, t.child!.proc.pid, Number(new URL(t.url).port), options);
      log(
        `  ${fmtBytes(r.perConnection)} per connection (marginal ${fmtBytes(r.marginal)}), ` +
          `RSS ${fmtMB(r.before)} → ${fmtMB(r.after)}`,
      );
      return r;
    } catch (err) {
      if (stopAll.signal.aborted) throw err;
      round.issues.push(`${name}: ${(err as Error).message}`);
      log(`  failed: ${(err as Error).message}`);
      return undefined;
    } finally {
      await t?.child?.stop();
    }
  };
  round.sluice = await one("sluice", () => startSluice(SPECS.rr1));
  if (tools.nginx) {
    const big = IDLE_CONNECTIONS + 2000;
    round.nginx = await one("nginx", () => startNginx({ workers: 1, connections: big }));
    // nginx allocates every connection slot at start: count it per connection too.
    const rssAt = async (connections: number) => {
      const t = await startNginx({ workers: 1, connections });
      try {
        await ready(t, 60_000);
        await sleep(500);
        return (await memoryOf(t.child!.proc.pid)).rss;
      } finally {
        await t.child!.stop();
      }
    };
    round.nginxSlot = ((await rssAt(big)) - (await rssAt(1024))) / (big - 1024);
  }
  return round;
}

// ---------------------------------------------------------------- TLS handshakes

/** Full TLS handshakes: bursts of 200 new connections with one request each, for `seconds`. */
async function handshakeRate(
  url: string,
  seconds: number,
): Promise<{ rate: number; conns: number }> {
  let conns = 0;
  let elapsed = 0;
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    const out = await run(tools.h2load!, ["--h1", "-t2", "-c200", "-n200", url], 60_000);
    const m = /finished in ([\d.]+)(m?s)/.exec(out.stdout);
    const ok = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded/.exec(out.stdout);
    if (!m || !ok) throw new Error(`h2load: ${(out.stderr || out.stdout).trim().slice(-300)}`);
    if (Number(ok[1]) !== 200) throw new Error(`h2load: only ${ok[1]} of 200 succeeded`);
    conns += 200;
    elapsed += Number(m[1]) / (m[2] === "ms" ? 1000 : 1);
  }
  return { rate: conns / elapsed, conns };
}

async function handshakesRound(): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const starts: [string, () => Promise<Target> | Target][] = [
    ["sluice", () => startSluice(SPECS.tls)],
    ["nginx", () => startNginx({ workers: 1, tls: true })],
  ];
  for (const [name, start] of starts) {
    if (name === "nginx" && !tools.nginx) continue;
    let t: Target | undefined;
    try {
      t = await start();
      await ready(t, 60_000);
      await handshakeRate(t.url, 1);
      const cpu = await cpuMeter(t.child!.proc.pid);
      const r = await handshakeRate(t.url, 6);
      out[name] = r.rate;
      out[`${name} cpu`] = await cpu(r.conns);
      log(`handshakes: ${name} ${out[name].toFixed(0)} per second`);
    } catch (err) {
      if (stopAll.signal.aborted) throw err;
      log(`handshakes: ${name} failed: ${(err as Error).message}`);
    } finally {
      await t?.child?.stop();
    }
  }
  return out;
}

// ---------------------------------------------------------------- formatting

const fmtRps = (n: number) => Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "?";
const fmtMs = (n: number) =>
  !Number.isFinite(n)
    ? "?"
    : n < 1
    ? `${(n * 1000).toFixed(0)} µs`
    : `${n < 10 ? n.toFixed(2) : n.toFixed(1)} ms`;
const pct = (x: number) => Number.isFinite(x) ? `${(x * 100).toFixed(0)}%` : "?";
const ratio = (x: number) => Number.isFinite(x) ? `${x.toFixed(2)}×` : "?";
const fmtCpu = (us: number | undefined) =>
  us === undefined || !Number.isFinite(us) ? "" : `${us.toFixed(1)} µs`;
/** Bytes as B under 1,000, else KB (1024) with one decimal. */
const fmtBytes = (b: number) =>
  !Number.isFinite(b) ? "?" : b >= 1000 ? `${(b / 1024).toFixed(1)} KB` : `${Math.round(b)} B`;
const fmtMB = (b: number) => Number.isFinite(b) ? `${(b / 2 ** 20).toFixed(1)} MB` : "?";
/** A message as one table cell: no newlines or pipes, at most 300 characters. */
function oneLine(text: string): string {
  const flat = text.replace(/;? last output:\s*/g, ": ").replace(/\s*\n\s*/g, " / ")
    .replace(/\|/g, "\\|");
  return flat.length > 300 ? flat.slice(0, 297) + "..." : flat;
}
/** "median (min–max)" of `xs` with `fmt`, or the one value. */
function spread(xs: number[], fmt: (x: number) => string): string {
  const v = xs.filter(Number.isFinite);
  if (!v.length) return "?";
  if (v.length === 1) return fmt(v[0]);
  return `${fmt(median(v))} (${fmt(Math.min(...v))}–${fmt(Math.max(...v))})`;
}
/** Median CPU per request over a row's rounds. */
function cpuOf(r: Row | undefined): number | undefined {
  const values = (r?.runs ?? []).flatMap((x) => x.cpuUs === undefined ? [] : [x.cpuUs]);
  return values.length ? median(values) : undefined;
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

// ---------------------------------------------------------------- main

async function setupTls(): Promise<void> {
  if (!tools.openssl) return;
  const c = { cert: `${tmp}/cert.pem`, key: `${tmp}/key.pem` };
  const out = await run(tools.openssl, [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    c.key,
    "-out",
    c.cert,
    "-days",
    "2",
    "-subj",
    "/CN=localhost",
    "-addext",
    "subjectAltName=DNS:localhost,IP:127.0.0.1",
  ], 30_000);
  if (out.ok) {
    cert = c;
    // nginx workers run unprivileged when the bench runs as root.
    await Deno.chmod(c.key, 0o644);
  } else log(`openssl could not make a certificate: ${out.stderr.trim()}`);
}

async function main(): Promise<number> {
  const install = !opts["no-install"];
  tools.wrk = await tool("wrk", "wrk", install);
  tools.nginx = await tool("nginx", "nginx", install);
  tools.haproxy = await tool("haproxy", "haproxy", install);
  tools.h2load = await tool("h2load", "nghttp2-client", install);
  tools.curl = await tool("curl", "curl", install);
  tools.openssl = await tool("openssl", "openssl", install);
  if (!tools.wrk || !tools.curl) {
    log("wrk and curl are needed (and could not be installed)");
    return 1;
  }

  const started = Date.now();
  const watchdog = setTimeout(async () => {
    log(`time limit of ${TIME_LIMIT} s reached; stopping everything`);
    stopAll.abort();
    await stopChildren();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    Deno.exit(3);
  }, TIME_LIMIT * 1000);

  const host = await machine();
  tmp = await Deno.makeTempDir({ prefix: "sluice-bench-" });
  const help = await run(
    Deno.execPath(),
    ["run", ...SLUICE_PERMS, `${ROOT}/main.ts`, "--help"],
    60_000,
    {
      cwd: ROOT,
    },
  );
  if (!/--workers/.test(help.stdout)) noWorkers = "`main.ts --help` does not list --workers";

  const rows: Row[] = [];
  const pairings: Pairing[] = [];
  /** Each round's pairing of sluice with nginx doing only what nginx does by default. */
  const barePairings: Pairing[] = [];
  /** Each round's pairing of nginx doing sluice's job with nginx doing only its defaults. */
  const jobPairings: Pairing[] = [];
  /** Per floor proxy: each round's pairing of it with nginx. */
  const floorPairings: Record<string, Pairing[]> = {};
  /** Per feature: each round's pairing of sluice alone with sluice and the feature. */
  const featurePairings: Record<string, Pairing[]> = {};
  const latency: LatencyRound[] = [];
  const bodies: BodyRound[] = [];
  const idle: IdleRound[] = [];
  const handshakes: Record<string, number>[] = [];
  try {
    await setupTls();
    await Deno.writeTextFile(`${tmp}/hooks.ts`, HOOKS_TS);
    if (want("body")) {
      bodyFile = await filledFile(`${tmp}/body.bin`, BODY_MB);
      warmupFile = await filledFile(`${tmp}/warmup.bin`, BODY_WARMUP_MB);
    }
    log("starting the backends (one process, 3 ports)");
    await startBackends();

    const skips: Record<string, string | undefined> = {};
    for (const [key, spec] of Object.entries(SPECS)) skips[key] = await checkSluice(spec);
    for (const [key, why] of Object.entries(skips)) if (why) log(`sluice ${key}: ${why}`);
    const s = (key: keyof typeof SPECS, extra: Parameters<typeof row>[4] = {}) => ({
      ...extra,
      skipped: skips[key] ? `skipped: ${skips[key]}` : undefined,
    });
    const ngx = (spec: NginxSpec) => () => startNginx(spec);
    const needH2 = tools.h2load ? undefined : "skipped: h2load (nghttp2-client) is not installed";

    rows.push(row("1", "direct to one backend (no proxy)", "direct", () => ({
      url: `${backendUrls()[0]}/`,
    }), { balanced: false }));
    rows.push(row("2a", "sluice round-robin, 1 worker", "sluice", () => startSluice(SPECS.rr1), {
      vs: "5a",
    }));
    rows.push(
      row(
        "2b",
        "sluice round-robin, 2 workers",
        "sluice",
        () => startSluice(SPECS.rr2),
        s("rr2", {
          vs: "5b",
        }),
      ),
    );
    rows.push(row("3", "sluice least-connections", "sluice", () => startSluice(SPECS.lc), {
      vs: "5a",
    }));
    rows.push(
      row(
        "4",
        "sluice round-robin + JSON access log",
        "sluice",
        () => startSluice(SPECS.log),
        s("log", { vs: "5a", after: checkAccessLog }),
      ),
    );
    rows.push(row("5a", "nginx round-robin, worker_processes 1", "nginx", ngx({ workers: 1 })));
    rows.push(row("5b", "nginx round-robin, worker_processes 2", "nginx", ngx({ workers: 2 })));
    rows.push(row("6a", "HAProxy round-robin, nbthread 1", "haproxy", () => startHaproxy(1)));
    rows.push(row("6b", "HAProxy round-robin, nbthread 2", "haproxy", () => startHaproxy(2)));
    rows.push(
      row(
        "7a",
        "sluice, ten routes (`/r8` matches the 9th)",
        "sluice",
        () => startSluice(SPECS.routes),
        s("routes", { vs: "7b" }),
      ),
    );
    rows.push(
      row("7b", "nginx, ten `location` blocks", "nginx", ngx({ workers: 1, routes: true })),
    );
    rows.push(
      row(
        "8",
        "sluice round-robin + trivial TypeScript hook",
        "sluice",
        () => startSluice(SPECS.hook),
        s("hook", { vs: "5a" }),
      ),
    );
    rows.push(
      row(
        "9a",
        "sluice TLS (HTTP/1.1, wrk over https)",
        "sluice",
        () => startSluice(SPECS.tls),
        s("tls", { vs: "9b" }),
      ),
    );
    rows.push(row("9b", "nginx TLS (`ssl`)", "nginx", ngx({ workers: 1, tls: true }), {
      skipped: cert ? undefined : "skipped: no TLS certificate (openssl is missing)",
    }));
    rows.push(
      row(
        "10a",
        "sluice HTTP/2 over TLS (h2load)",
        "sluice",
        () => startSluice(SPECS.h2),
        s("h2", { vs: "10b", load: "h2load" }),
      ),
    );
    rows.push(
      row("10b", "nginx HTTP/2 (`ssl http2`, h2load)", "nginx", ngx({ workers: 1, h2: true }), {
        load: "h2load",
        skipped: cert ? undefined : "skipped: no TLS certificate (openssl is missing)",
      }),
    );
    for (const r of rows) {
      if (r.load === "h2load" && needH2 && !r.skipped) r.skipped = needH2;
      if (r.group === "nginx" && !tools.nginx) r.skipped = "skipped: nginx is not installed";
      if (r.group === "haproxy" && !tools.haproxy) r.skipped = "skipped: haproxy is not installed";
    }
    const features = (["log", "routes", "hook"] as const).filter((k) => !skips[k]);
    for (const k of features) featurePairings[FEATURE_LABELS[k]] = [];

    for (let round = 1; round <= ROUNDS; round++) {
      if (ROUNDS > 1) log(`round ${round} of ${ROUNDS}`);
      if (want("throughput")) {
        for (const r of rows) {
          if (r.skipped) {
            if (round === 1) log(`row ${r.id}: ${r.skipped}`);
            continue;
          }
          await measureRow(r);
        }
      }
      await ensureBackends();
      if ((want("pairing") || want("floors")) && PIN) {
        await pinBackends("0");
        try {
          if (tools.nginx) {
            const p = await measurePairingTwice(
              ["sluice round-robin", "nginx (1 worker)"],
              [() => startSluice(SPECS.rr1, "1"), () => startNginx({ workers: 1 }, "1")],
            );
            if (p) pairings.push(p);
            const bare = !want("pairing") ? undefined : await measurePairing(
              ["sluice round-robin", "nginx (1 worker, bare)"],
              [
                () => startSluice(SPECS.rr1, "1"),
                () => startNginx({ workers: 1, bare: true }, "1"),
              ],
            );
            if (bare) barePairings.push(bare);
            const job = !want("pairing") ? undefined : await measurePairing(
              ["nginx (1 worker)", "nginx (1 worker, bare)"],
              [
                () => startNginx({ workers: 1 }, "1"),
                () => startNginx({ workers: 1, bare: true }, "1"),
              ],
            );
            if (job) jobPairings.push(job);
          }
          const floors = want("floors") && tools.nginx ? Object.entries(FLOORS) : [];
          for (const [name, label] of floors) {
            const p = await measurePairing(
              [label, "nginx (1 worker)"],
              [
                () => startFloor(name as keyof typeof FLOORS, "1"),
                () => startNginx({ workers: 1 }, "1"),
              ],
            );
            if (p) (floorPairings[label] ??= []).push(p);
          }
          // One feature at a time against sluice without it, like sluice against nginx above:
          // four proxies sharing a core's caches at once made every feature read dearer than it
          // is alone on a core (the access log 11–12 % against 7 %).
          for (const k of want("pairing") ? features : []) {
            const label = FEATURE_LABELS[k];
            const p = await measurePairingTwice(
              ["sluice round-robin", `sluice with ${label}`],
              [() => startSluice(SPECS.rr1, "1"), () => startSluice(SPECS[k], "1")],
            );
            if (p) featurePairings[label].push(p);
          }
          for await (const e of Deno.readDir(tmp)) {
            if (e.name.startsWith("access-")) await Deno.remove(`${tmp}/${e.name}`);
          }
        } finally {
          await pinBackends(`0-${navigator.hardwareConcurrency - 1}`);
        }
      }
      await ensureBackends();
      if (want("latency") || want("body")) await latencyAndBody(latency, bodies);
      await ensureBackends();
      if (want("idle")) idle.push(await idleRound());
      await ensureBackends();
      if (want("handshakes") && cert && tools.h2load) handshakes.push(await handshakesRound());
    }
  } finally {
    clearTimeout(watchdog);
    await stopChildren();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }

  let md = await report({
    rows,
    pairings,
    barePairings,
    jobPairings,
    featurePairings,
    floorPairings,
    latency,
    bodies,
    idle,
    handshakes,
    host,
    seconds: (Date.now() - started) / 1000,
  });
  if (!opts["no-write"]) {
    const dir = opts.out.slice(0, opts.out.lastIndexOf("/"));
    if (dir) await Deno.mkdir(dir, { recursive: true });
    // The soak's section and the hand-written floors and profile sit below a marker: keep them.
    const kept = keptPartOf(await Deno.readTextFile(opts.out).catch(() => ""));
    if (kept) md = md.replace(/\n*$/, "\n\n") + kept;
    await Deno.writeTextFile(opts.out, md);
    // Keep `deno fmt --check` (deno task check) green: let deno fmt lay out the tables.
    const fmt = await run(Deno.execPath(), ["fmt", "-q", opts.out], 30_000, { cwd: ROOT });
    if (fmt.ok) md = await Deno.readTextFile(opts.out);
    log(`wrote ${opts.out}`);
  }
  console.log(md);
  const flagged = rows.some((r) => r.issues.length || r.skipped?.startsWith("failed")) ||
    bodies.some((b) => b.issues.length) ||
    latency.some((l) => Object.values(l.paced).some((p) => p.failed > 0));
  return flagged ? 1 : 0;
}

// ---------------------------------------------------------------- report

interface Results {
  rows: Row[];
  pairings: Pairing[];
  barePairings: Pairing[];
  jobPairings: Pairing[];
  featurePairings: Record<string, Pairing[]>;
  floorPairings: Record<string, Pairing[]>;
  latency: LatencyRound[];
  bodies: BodyRound[];
  idle: IdleRound[];
  handshakes: Record<string, number>[];
  host: { cpu: string; nproc: number; load: string };
  seconds: number;
}

/** Per-round ratios a/b of two rows' requests/s (rounds where both ran). */
function rowRatios(a: Row | undefined, b: Row | undefined): number[] {
  if (!a || !b) return [];
  const n = Math.min(a.runs.length, b.runs.length);
  return Array.from({ length: n }, (_, i) => a.runs[i].rps / b.runs[i].rps);
}

async function report(res: Results): Promise<string> {
  const { rows } = res;
  const byId = (id: string) => rows.find((r) => r.id === id);
  const load = (await machine()).load;
  const L: string[] = [];
  const verdict = (ok: boolean) => ok ? "**met**" : "**not met**";
  L.push("# sluice benchmark", "");
  L.push(`- Date: ${new Date().toISOString().replace(/\.\d+Z$/, "Z")}`);
  L.push(
    `- Machine: ${res.host.cpu}, nproc ${res.host.nproc}; load average ${res.host.load} before, ` +
      `${load} after`,
  );
  L.push(
    `- Versions: Deno ${Deno.version.deno}, nginx ${await versionOf(
      tools.nginx,
      ["-v"],
      /nginx\/(\S+)/,
    )}, ` +
      `HAProxy ${await versionOf(tools.haproxy, ["-v"], /version (\S+)/)}, wrk ${await versionOf(
        tools.wrk,
        ["-v"],
        /^wrk (\S+)/m,
      )}, h2load ${await versionOf(tools.h2load, ["--version"], /nghttp2\/(\S+)/)}`,
  );
  L.push(
    `- ${ROUNDS} round${ROUNDS > 1 ? "s" : ""}; figures are medians over rounds with the range ` +
      `(min–max) in brackets; ${res.seconds.toFixed(0)} s in all`,
  );
  L.push(
    "- Backends: one `bench/bench_backend.ts` process serving 3 ports (raw HTTP/1.1 over " +
      "`Deno.listen`, cheap per request, so that the proxy is what is measured); every proxy " +
      "balances over the same 3; sluice logs at warn; nginx and HAProxy keep upstream " +
      "connections alive, log nothing, and do to each request what sluice does by default (Host " +
      "kept, X-Forwarded-For, -Proto and -Host set, X-Request-Id kept or made and returned: " +
      "`bench/peers.ts`); nginx streams uploads (`proxy_request_buffering off`)",
  );
  L.push("");

  // -------- throughput
  if (rows.some((r) => r.runs.length)) {
    L.push("## Throughput", "");
    L.push(
      `\`wrk -t${THREADS} -c${CONNECTIONS} -d${DURATION}s --latency\` per row after a ${WARMUP} s ` +
        `warm-up (HTTP/2 rows: \`h2load -t${THREADS} -c${H2_CLIENTS} -m${h2Streams()}\`, the ` +
        "same number of requests in flight), GET / on 127.0.0.1. **Nothing is pinned** in this " +
        "table: with 2 workers a proxy needs both cores, so every row, 1 worker or 2, shares the " +
        "machine's cores with wrk and the backends alike. Requests/s therefore includes the " +
        "load generator's and the backends' share of the CPU; CPU per request (user + system " +
        "time of the proxy's processes) does not. The per-core comparison is the same-core " +
        "pairing below.",
      "",
    );
    L.push(
      "| # | Target | Requests/s | p50 | p99 | vs | CPU per request | Check |",
    );
    L.push("|---|---|--:|--:|--:|--:|--:|---|");
    for (const r of rows) {
      const x = r.result;
      const vsRow = r.vs ? byId(r.vs) : undefined;
      const vs = x && vsRow?.result ? `${pct(median(rowRatios(r, vsRow)))} of ${vsRow.id}` : "";
      const check = r.skipped
        ? oneLine(r.skipped)
        : r.issues.length
        ? `**FLAGGED**: ${oneLine(r.issues.join("; "))}`
        : "ok, all 2xx";
      const notes = r.notes.length ? ` (${r.notes.join("; ")})` : "";
      const rps = r.runs.length ? spread(r.runs.map((x) => x.rps), fmtRps) : "–";
      L.push(
        `| ${r.id} | ${r.label} | ${rps} | ${x ? fmtMs(x.p50) : "–"} | ${
          x ? fmtMs(x.p99) : "–"
        } | ` +
          `${vs} | ${fmtCpu(cpuOf(r))} | ${check}${notes} |`,
      );
    }
    L.push("");
    const scale = (one: string, two: string, name: string) => {
      const ratios = rowRatios(byId(two), byId(one));
      return ratios.length ? `${name} ${spread(ratios, ratio)}` : undefined;
    };
    const scaling = [
      scale("2a", "2b", "sluice"),
      scale("5a", "5b", "nginx"),
      scale("6a", "6b", "HAProxy"),
    ].filter(Boolean);
    if (scaling.length) {
      L.push(
        `- **Scaling, 2 workers ÷ 1** (requests/s, per round): ${scaling.join("; ")}. On this ` +
          `${res.host.nproc}-core machine wrk and the backends need the same cores, so no proxy ` +
          "can double; nginx's and HAProxy's own factors are the reference.",
      );
    }
    L.push("");
  }

  // -------- same-core pairings
  const features = Object.entries(res.featurePairings).filter(([, rounds]) => rounds.length);
  if (res.pairings.length || features.length || Object.keys(res.floorPairings).length) {
    L.push("## Work per core (same-core pairing)", "");
    L.push(
      "Proxies pinned together to core 1 and loaded at once, each by its own " +
        `\`wrk -t${THREADS} -c${CONNECTIONS}\` on core 0 (with the backends): a slow phase of the ` +
        "shared machine hits them alike, and the ratio of their CPU per request is the ratio of " +
        "the work each does per core. Two at a time: sluice with nginx doing sluice's job, sluice " +
        "with nginx's bare defaults, the two nginx setups with each other, and sluice with each " +
        "feature against sluice without it. The pairings a target is judged on (sluice with nginx " +
        "doing its job, and each feature) run twice a round, the second time started in the " +
        "other order, and each round's figure pools the two.",
      "",
    );
    if (res.pairings.length) {
      const work = res.pairings.map((p) => p[1]!.cpuUs! / p[0]!.cpuUs!);
      const w = median(work);
      L.push(
        `- sluice (1 worker) ${spread(res.pairings.map((p) => p[0]!.cpuUs!), fmtCpu)} and nginx ` +
          `(1 worker) ${spread(res.pairings.map((p) => p[1]!.cpuUs!), fmtCpu)} CPU per ` +
          `request, nginx doing to each request what sluice does by default (Host kept, ` +
          "X-Forwarded-For, -Proto and -Host set, X-Request-Id kept or made, sent up and " +
          `returned): sluice does **${pct(w)}** of nginx's work per core (each round: ${
            work.map(pct).join(", ")
          }; target ≥ 75%: ${verdict(w >= 0.75)}).`,
      );
    }
    if (res.barePairings.length) {
      const work = res.barePairings.map((p) => p[1]!.cpuUs! / p[0]!.cpuUs!);
      L.push(
        `- Against nginx doing only what it does by default (Host rewritten to the upstream's ` +
          "name, nothing added; the benchmark's nginx until 2026-12-02), paired the same way: " +
          `sluice ${spread(res.barePairings.map((p) => p[0]!.cpuUs!), fmtCpu)}, nginx ${
            spread(res.barePairings.map((p) => p[1]!.cpuUs!), fmtCpu)
          } CPU per request; sluice does **${pct(median(work))}** of its work per core (each ` +
          `round: ${work.map(pct).join(", ")}).`,
      );
    }
    if (res.jobPairings.length) {
      const extra = res.jobPairings.map((p) => p[0]!.cpuUs! / p[1]!.cpuUs! - 1);
      L.push(
        "- What sluice's default additions cost nginx, the two nginx configurations paired the " +
          `same way: ${spread(res.jobPairings.map((p) => p[0]!.cpuUs!), fmtCpu)} against ${
            spread(res.jobPairings.map((p) => p[1]!.cpuUs!), fmtCpu)
          } CPU per request, **${pct(median(extra))}** more (each round: ${
            extra.map(pct).join(", ")
          }).`,
      );
    }
    for (const [label, rounds] of features) {
      const costs = rounds.map((p) => 1 - p[0]!.cpuUs! / p[1]!.cpuUs!);
      const c = median(costs);
      const target = FEATURE_TARGETS[label];
      L.push(
        `- Adding ${label} costs **${(c * 100).toFixed(1)}%** of sluice's throughput per core ` +
          `(each round: ${costs.map((x) => `${(x * 100).toFixed(1)}%`).join(", ")}` +
          (target === undefined ? "" : `; target < ${target * 100}%: ${verdict(c < target)}`) +
          `): ${spread(rounds.map((p) => p[1]!.cpuUs!), fmtCpu)} against ${
            spread(rounds.map((p) => p[0]!.cpuUs!), fmtCpu)
          } CPU per request without it, paired on the core.`,
      );
    }
    const floors = Object.entries(res.floorPairings).filter(([, rounds]) => rounds.length);
    if (floors.length) {
      L.push(
        "",
        "Floors: smaller Deno proxies, each paired with nginx the same way, with sluice's own " +
          "pairing above for comparison. Each handles the benchmark's GET and nothing else; see " +
          "`bench/floors/` and [where the time goes](#work-per-core).",
        "",
        "| Proxy on the core with nginx | CPU per request | nginx's | Work per core vs nginx |",
        "|---|--:|--:|--:|",
      );
      const line = (label: string, rounds: Pairing[]) => {
        const work = rounds.map((p) => p[1]!.cpuUs! / p[0]!.cpuUs!);
        L.push(
          `| ${label} | ${fmtCpu(median(rounds.map((p) => p[0]!.cpuUs!)))} | ` +
            `${fmtCpu(median(rounds.map((p) => p[1]!.cpuUs!)))} | **${pct(median(work))}** ` +
            `(${work.map(pct).join(", ")}) |`,
        );
      };
      for (const [label, rounds] of floors) line(label, rounds);
      if (res.pairings.length) line("sluice round-robin (above)", res.pairings);
      L.push("");
    }
    L.push("");
  }

  // -------- latency
  if (res.latency.length) {
    const names = Object.keys(res.latency[0].one);
    L.push("## Latency", "");
    if (Object.keys(res.latency[0].paced).length) {
      L.push(
        `Paced: ${PACED_RATE.toLocaleString("en-US")} requests/s over ${PACED_CONNECTIONS} ` +
          `connections for ${PACED_SECONDS} s, with h2load (\`--h1 --rps\`), one h2load process per ` +
          "connection so their send times interleave (one h2load sends all its connections' " +
          "requests on the same timer tick, which measures bursts). Nothing pinned. sluice and " +
          `nginx take turns in slices of about ${PACED_SLICE} s (sluice, nginx, nginx, sluice, …), ` +
          "each one's slices pooled, so that the shared machine's slow phases fall on both; the " +
          "direct target runs once, before them.",
        "",
      );
      L.push("| Target | p50 | p90 | p99 | max | achieved req/s | failed | p99 vs nginx |");
      L.push("|---|--:|--:|--:|--:|--:|--:|--:|");
      for (const name of names) {
        const runs = res.latency.map((l) => l.paced[name]).filter(Boolean);
        if (!runs.length) continue;
        const ng = res.latency.map((l) => l.paced.nginx?.p99);
        const vs = name === "sluice" && ng.every(Number.isFinite)
          ? spread(runs.map((r, i) => r.p99 / ng[i]!), ratio)
          : "";
        L.push(
          `| ${name} | ${spread(runs.map((r) => r.p50), fmtMs)} | ${
            spread(runs.map((r) => r.p90), fmtMs)
          } | ${spread(runs.map((r) => r.p99), fmtMs)} | ${
            spread(runs.map((r) => r.max), fmtMs)
          } | ${spread(runs.map((r) => r.rate), fmtRps)} | ${
            runs.reduce((s, r) => s + r.failed, 0)
          } | ${vs} |`,
        );
      }
      const s99 = res.latency.map((l) => l.paced.sluice?.p99 / l.paced.nginx?.p99);
      if (s99.every(Number.isFinite)) {
        L.push(
          "",
          `- sluice's paced p99 is ${ratio(median(s99))} nginx's (target ≤ 1.5×: ${
            verdict(median(s99) <= 1.5)
          }).`,
        );
      }
      L.push("");
    }
    L.push(
      "One connection (`wrk -t1 -c1 -d5s`): time per request (1 / requests per second) and what " +
        "each proxy adds to a direct request.",
      "",
    );
    L.push("| Target | µs per request | p50 | added to direct |");
    L.push("|---|--:|--:|--:|");
    for (const name of names) {
      const us = res.latency.map((l) => l.one[name].us);
      const added = res.latency.map((l) => l.one[name].us - l.one.direct.us);
      L.push(
        `| ${name} | ${spread(us, (x) => x.toFixed(0))} | ${
          spread(res.latency.map((l) => l.one[name].p50), fmtMs)
        } | ${name === "direct" ? "" : spread(added, (x) => `${x.toFixed(0)} µs`)} |`,
      );
    }
    L.push("");
  }

  // -------- bodies
  if (res.bodies.length) {
    const names = Object.keys(res.bodies[0].download);
    L.push("## Large bodies", "");
    L.push(
      `${BODY_MB} MB down (GET) and up (POST, Content-Length) through one connection with curl, ` +
        `MB/s (10^6 bytes), each after an untimed ${BODY_WARMUP_MB} MB transfer both ways; nothing pinned.`,
      "",
    );
    L.push("| Target | download MB/s | vs nginx | upload MB/s | vs nginx |");
    L.push("|---|--:|--:|--:|--:|");
    for (const name of names) {
      const d = res.bodies.map((b) => b.download[name]);
      const u = res.bodies.map((b) => b.upload[name]);
      const dv = res.bodies.map((b) => b.download[name] / b.download.nginx);
      const uv = res.bodies.map((b) => b.upload[name] / b.upload.nginx);
      const show = name !== "nginx" && res.bodies[0].download.nginx !== undefined;
      L.push(
        `| ${name} | ${spread(d, (x) => x.toFixed(0))} | ${show ? spread(dv, pct) : ""} | ${
          spread(u, (x) => x.toFixed(0))
        } | ${show ? spread(uv, pct) : ""} |`,
      );
    }
    L.push("");
    const peak = res.bodies.map((b) => b.sluicePeak ?? NaN);
    const before = res.bodies.map((b) => b.sluiceRss ?? NaN);
    const dv = median(res.bodies.map((b) => b.download.sluice / b.download.nginx));
    const uv = median(res.bodies.map((b) => b.upload.sluice / b.upload.nginx));
    L.push(
      `- sluice / nginx: download ${pct(dv)}, upload ${pct(uv)} (target ≥ 85%: ${
        verdict(dv >= 0.85 && uv >= 0.85)
      }). sluice's RSS before the transfers ${spread(before, fmtMB)}, peak (VmHWM) after them ` +
        `${spread(peak, fmtMB)}: the ${BODY_MB} MB bodies are streamed, not held.`,
    );
    const issues = res.bodies.flatMap((b) => b.issues);
    if (issues.length) L.push(`- **FLAGGED**: ${issues.join("; ")}`);
    L.push("");
  }

  // -------- idle memory
  if (res.idle.length) {
    L.push("## Memory per idle connection", "");
    L.push(
      `${IDLE_CONNECTIONS.toLocaleString("en-US")} keep-alive client connections held open by a ` +
        "separate client process, half of them after one request; RSS of the proxy's processes " +
        "before and after (sluice with 1 worker, nginx with 1 worker). Opened in two steps: the " +
        "marginal figure is the RSS growth of the second half alone, which leaves out one-off " +
        "growth (V8's young generation grows to tens of MB once many objects survive). nginx " +
        "allocates its `worker_connections` slots at start, so its figure adds that slot.",
      "",
    );
    L.push("| Target | RSS before | RSS after | per connection | marginal |");
    L.push("|---|--:|--:|--:|--:|");
    for (const name of ["sluice", "nginx"] as const) {
      const runs = res.idle.map((i) => i[name]).filter((x): x is IdleResult => !!x);
      if (!runs.length) continue;
      const slot = name === "nginx" ? res.idle.map((i) => i.nginxSlot ?? 0) : runs.map(() => 0);
      L.push(
        `| ${name} | ${spread(runs.map((r) => r.before), fmtMB)} | ${
          spread(runs.map((r) => r.after), fmtMB)
        } | ${spread(runs.map((r, i) => r.perConnection + slot[i]), fmtBytes)} | ${
          spread(runs.map((r, i) => r.marginal + slot[i]), fmtBytes)
        } |`,
      );
    }
    const s = median(res.idle.map((i) => i.sluice?.perConnection ?? NaN));
    if (Number.isFinite(s)) {
      L.push(
        "",
        `- nginx's slot: ${spread(res.idle.map((i) => i.nginxSlot ?? NaN), fmtBytes)} per ` +
          `connection. sluice per idle connection: ${fmtBytes(s)} (target ≤ 8 KB: ${
            verdict(s <= 8 * 1024)
          }).`,
      );
    }
    const issues = res.idle.flatMap((i) => i.issues);
    if (issues.length) L.push(`- **FLAGGED**: ${issues.join("; ")}`);
    L.push("");
  }

  // -------- handshakes
  if (res.handshakes.length) {
    const h = res.handshakes;
    L.push("## TLS handshakes", "");
    L.push(
      "Full handshakes per second: h2load (`--h1 -t2 -c200 -n200`, again and again for 6 s), " +
        "each connection new (h2load does not resume sessions) with one request; ECDSA P-256 " +
        "certificate, TLS 1.3; 1 worker each, nothing pinned.",
      "",
    );
    for (const name of ["sluice", "nginx"]) {
      const v = h.map((x) => x[name]).filter(Number.isFinite);
      if (!v.length) continue;
      const cpu = h.map((x) => x[`${name} cpu`]).filter(Number.isFinite);
      L.push(
        `- ${name}: ${spread(v, fmtRps)} handshakes/s` +
          (cpu.length ? `, ${spread(cpu, fmtCpu)} CPU each` : "") +
          (name === "sluice" && h.every((x) => x.nginx)
            ? ` (${pct(median(h.map((x) => x.sluice / x.nginx)))} of nginx)`
            : "") +
          ".",
      );
    }
    L.push("");
  }
  return L.join("\n") + "\n";
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
