/**
 * main.ts and backend.ts as real subprocesses: spawned from the repository root, their
 * output collected line by line, waits on those lines; disposal kills and awaits them.
 */
import { tool } from "../bench/proc.ts";
import { waitFor } from "./helpers.ts";

/** The repository root (with a trailing slash); subprocesses run there. */
export const ROOT = new URL("../", import.meta.url).pathname;

/**
 * Worker threads the end-to-end tests run sluice with: `SLUICE_TEST_WORKERS=2 deno task test`
 * runs the whole suite again with two (CI does both).
 */
export const TEST_WORKERS: number = Number(Deno.env.get("SLUICE_TEST_WORKERS") ?? "1");

/** Installs a Debian package providing `command` when missing; the reason when impossible. */
export async function need(command: string, pkg: string): Promise<string | undefined> {
  return (await tool(command, pkg, true))
    ? undefined
    : `${command} missing (apt-get install ${pkg} failed)`;
}

/** Extra permissions for {@linkcode mainArgs}. */
export interface MainPermissions {
  /** Adds --allow-write. @default false */
  write?: boolean;
  /** Adds --allow-ffi (TCP_NODELAY on TLS listeners). @default false */
  ffi?: boolean;
}

/**
 * `deno run <permissions> main.ts`, the way the README runs it, plus `write` and `ffi`.
 * With {@linkcode TEST_WORKERS} above 1, `--workers N` follows (flags given later win).
 */
export function mainArgs({ write = false, ffi = false }: MainPermissions = {}): string[] {
  return [
    "run",
    "--allow-net",
    "--allow-read",
    ...(write ? ["--allow-write"] : []),
    "--allow-env=LOG_TOKENS,LOG_STREAM",
    ...(ffi ? ["--allow-ffi"] : []),
    "main.ts",
    ...(TEST_WORKERS > 1 ? ["--workers", String(TEST_WORKERS)] : []),
  ];
}

/** Collects a stream's lines as they arrive. */
export class Lines {
  readonly lines: string[] = [];
  /** Set once the stream ended (the process closed it or exited). */
  ended = false;
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      let rest = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        rest += chunk;
        const parts = rest.split("\n");
        rest = parts.pop()!;
        this.lines.push(...parts);
      }
      if (rest) this.lines.push(rest);
      this.ended = true;
    })();
  }

  /** Lines matching `pattern`. */
  matching(pattern: RegExp): string[] {
    return this.lines.filter((l) => pattern.test(l));
  }

  /**
   * Waits until at least `count` lines match `pattern`; returns the matching lines.
   * Fails after `timeout` ms, or at once if the stream ends first.
   */
  async waitFor(pattern: RegExp, count = 1, timeout = 30_000): Promise<string[]> {
    const enough = () => this.matching(pattern).length >= count;
    try {
      await waitFor(() => enough() || this.ended, `${pattern}`, timeout);
    } catch { /* reported below */ }
    if (!enough()) {
      throw new Error(
        `${
          this.ended ? "output ended" : "timed out"
        } without ${count} line(s) matching ${pattern}; got:\n${this.lines.join("\n")}`,
      );
    }
    return this.matching(pattern);
  }
}

/** A subprocess whose stdout and stderr are read line by line. */
export interface Subprocess {
  child: Deno.ChildProcess;
  pid: number;
  stdout: Lines;
  stderr: Lines;
  /** Resolves with the exit status. */
  status: Promise<Deno.CommandStatus>;
  /** Sends a signal. */
  kill(signal: Deno.Signal): void;
  /**
   * Sends `signal` unless it exited already, then waits for the exit and the end of both
   * pipes. Only the first call signals; later ones wait for the same result.
   */
  stop(signal: Deno.Signal): Promise<Deno.CommandStatus>;
  /** `stop("SIGKILL")`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Runs `deno <args>` in {@linkcode ROOT}. */
export function spawn(args: string[]): Subprocess {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = new Lines(child.stdout);
  const stderr = new Lines(child.stderr);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  let stopped: Promise<Deno.CommandStatus> | undefined;
  const stop = (signal: Deno.Signal) =>
    stopped ??= (async () => {
      if (!exited) {
        try {
          child.kill(signal);
        } catch { /* exited meanwhile */ }
      }
      const s = await status;
      await Promise.all([stdout.done, stderr.done]);
      return s;
    })();
  return {
    child,
    pid: child.pid,
    stdout,
    stderr,
    status,
    kill: (signal) => child.kill(signal),
    stop,
    async [Symbol.asyncDispose]() {
      await stop("SIGKILL");
    },
  };
}

/** Options of {@linkcode startMain}. */
export interface StartMainOptions extends MainPermissions {
  /** How many `sluice listening on` lines to wait for (one a listener). @default 1 */
  listeners?: number;
  /** How long to wait for them, in ms. @default 30_000 */
  timeout?: number;
}

/**
 * Starts `deno run … main.ts <args>` (see {@linkcode mainArgs}) and waits up to `timeout`
 * ms for `listeners` `sluice listening on http(s)://HOST:PORT` lines; kills it if they never
 * come. `port` is the first listener's, `ports` all of them in the order they were logged.
 */
export async function startMain(
  args: string[],
  { write = false, ffi = false, listeners = 1, timeout = 30_000 }: StartMainOptions = {},
): Promise<{ proc: Subprocess; port: number; ports: number[] }> {
  const proc = spawn([...mainArgs({ write, ffi }), ...args]);
  const listening = /sluice listening on https?:\/\/[^\s:"]+:(\d+)/;
  try {
    const lines = await proc.stderr.waitFor(listening, listeners, timeout);
    const ports = lines.map((line) => Number(listening.exec(line)![1]));
    return { proc, port: ports[0], ports };
  } catch (err) {
    await proc[Symbol.asyncDispose]();
    throw err;
  }
}

/** Runs `deno <args>` in {@linkcode ROOT} to completion; its exit code and output. */
export async function runDeno(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args, cwd: ROOT, stdin: "null" }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

/**
 * `main.ts --check -c FILE` with only what checking needs (read, env) to completion; its exit
 * code and output (each without its final newline).
 */
export async function checkConfig(
  file: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await runDeno([
    "run",
    "--allow-read",
    "--allow-env",
    "main.ts",
    "--check",
    "-c",
    file,
  ]);
  const chomp = (text: string) => text.endsWith("\n") ? text.slice(0, -1) : text;
  return { code: out.code, stdout: chomp(out.stdout), stderr: chomp(out.stderr) };
}
