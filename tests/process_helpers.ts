/**
 * main.ts and backend.ts as real subprocesses: spawned from the repository root, their
 * output collected line by line, waits on those lines; disposal kills and awaits them.
 */
import { waitFor } from "./helpers.ts";

/** The repository root (with a trailing slash); subprocesses run there. */
export const ROOT = new URL("../", import.meta.url).pathname;

/**
 * Worker threads the end-to-end tests run sluice with: `SLUICE_TEST_WORKERS=2 deno task test`
 * runs the whole suite again with two (CI does both).
 */
export const TEST_WORKERS: number = Number(Deno.env.get("SLUICE_TEST_WORKERS") ?? "1");

/**
 * `deno run <permissions> main.ts`, the way the README runs it; `write` adds --allow-write.
 * With {@linkcode TEST_WORKERS} above 1, `--workers N` follows (flags given later win).
 */
export function mainArgs({ write = false } = {}): string[] {
  return [
    "run",
    "--allow-net",
    "--allow-read",
    ...(write ? ["--allow-write"] : []),
    "--allow-env=LOG_TOKENS,LOG_STREAM",
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

/**
 * Starts `deno run … main.ts <args>` (see {@linkcode mainArgs}) and waits up to `timeout`
 * ms for its `sluice listening on http://HOST:PORT` line; kills it if that never comes.
 */
export async function startMain(
  args: string[],
  { write = false, timeout = 30_000 } = {},
): Promise<{ proc: Subprocess; port: number }> {
  const proc = spawn([...mainArgs({ write }), ...args]);
  const listening = /sluice listening on https?:\/\/[^\s:"]+:(\d+)/;
  try {
    const [line] = await proc.stderr.waitFor(listening, 1, timeout);
    return { proc, port: Number(listening.exec(line)![1]) };
  } catch (err) {
    await proc[Symbol.asyncDispose]();
    throw err;
  }
}
