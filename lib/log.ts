/** Levelled logging as text or JSON lines, the project's stand-in for @std/log (JSR is not reachable). */

/** Log levels, from most to least verbose. */
export const LEVELS = ["debug", "info", "warn", "error"] as const;
/** One of {@linkcode LEVELS}. */
export type Level = typeof LEVELS[number];
/** Output formats. */
export type LogFormat = "text" | "json";

/** A logger writing one line per record to a sink (stderr by default). */
export class Logger {
  #min: number;
  #format: LogFormat;
  #write: (line: string) => void;

  /** Fields added to every record (a worker thread's index). */
  #base: Record<string, unknown> | undefined;

  constructor(
    level: Level = "info",
    format: LogFormat = "text",
    write: (line: string) => void = writeStderr,
    base?: Record<string, unknown>,
  ) {
    this.#base = base;
    this.#min = LEVELS.indexOf(level);
    this.#format = format;
    this.#write = write;
  }

  /** Changes level and format in place (used on config reload). */
  configure(level: Level, format: LogFormat): void {
    this.#min = LEVELS.indexOf(level);
    this.#format = format;
  }

  /** Whether records at `level` are written. */
  enabled(level: Level): boolean {
    return LEVELS.indexOf(level) >= this.#min;
  }

  /** Debug details, off by default. */
  debug(msg: string, fields?: Record<string, unknown>): void {
    this.#log("debug", msg, fields);
  }
  /** Normal operational events. */
  info(msg: string, fields?: Record<string, unknown>): void {
    this.#log("info", msg, fields);
  }
  /** Something went wrong but was handled. */
  warn(msg: string, fields?: Record<string, unknown>): void {
    this.#log("warn", msg, fields);
  }
  /** Something failed. */
  error(msg: string, fields?: Record<string, unknown>): void {
    this.#log("error", msg, fields);
  }

  /** Writes a line another logger already formatted (a worker thread's). */
  line(text: string): void {
    this.#write(text);
  }

  #log(level: Level, msg: string, fields?: Record<string, unknown>): void {
    if (LEVELS.indexOf(level) < this.#min) return;
    if (this.#base) fields = { ...fields, ...this.#base };
    const time = new Date().toISOString();
    if (this.#format === "json") {
      // Assigned twice so the record keeps its own time, level and msg first, whatever the fields say.
      const record = Object.assign({ time, level, msg }, fields, { time, level, msg });
      this.#write(JSON.stringify(record, plain));
      return;
    }
    let line = `${time} ${level.toUpperCase().padEnd(5)} ${msg}`;
    if (fields) {
      for (const [key, value] of Object.entries(fields)) line += ` ${key}=${formatValue(value)}`;
    }
    this.#write(line);
  }
}

// Errors stringify to {} and bigints throw; neither may cost a log line.
function plain(_key: string, value: unknown): unknown {
  if (value instanceof Error) return String(value);
  if (typeof value === "bigint") return value.toString();
  return value;
}

function formatValue(value: unknown): string {
  const top = plain("", value);
  const text = typeof top === "string" ? top : String(JSON.stringify(top, plain));
  return /[\s"=]/.test(text) ? JSON.stringify(text) : text;
}

const encoder = new TextEncoder();
function writeStderr(line: string): void {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

/**
 * How long the first line of a batch waits for company (ms). Each batch's write hands the bytes
 * to a runtime thread and back: 50 ms rather than 10 ms cut those thread switches to a fifth and
 * saved 0.45 µs per request in the same-core pairing; a line still reaches the file within about
 * 50 ms.
 */
const BATCH_WINDOW = 50;

/** The byte buffer a LineWriter fills while the previous one is written: grows if a batch needs more. */
const LINE_BUFFER = 64 * 1024;
/** A buffer a burst grew up to this size is kept for the next batches. */
const MAX_SPARE_BUFFER = 4 * 1024 * 1024;

/** Writes whole lines to a file or stdout without blocking the caller (used by the access log). */
export class LineWriter {
  #file: Deno.FsFile | undefined;
  /**
   * Lines are encoded into bytes as they come, so the strings die young: kept in a queue until
   * the batch is written, every line would outlive a scavenge or two and double the GC's work.
   */
  #buf = new Uint8Array(LINE_BUFFER);
  #len = 0;
  /** The buffer the previous batch went out from, reused for the next. */
  #spare: Uint8Array<ArrayBuffer> | undefined;
  #flushing: Promise<void> | undefined;

  constructor(path?: string) {
    if (path) this.#file = Deno.openSync(path, { append: true, create: true, write: true });
  }

  /** Queues a line; lines are written in order in batches. */
  write(line: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 unit (a surrogate pair: 4 bytes for 2 units).
    const need = line.length * 3 + 1;
    if (this.#len + need > this.#buf.length) {
      const bigger = new Uint8Array(Math.max(2 * this.#buf.length, this.#len + need));
      bigger.set(this.#buf.subarray(0, this.#len));
      this.#buf = bigger;
    }
    this.#len += encoder.encodeInto(line, this.#buf.subarray(this.#len)).written;
    this.#buf[this.#len++] = 10;
    this.#flushing ??= this.#flush();
  }

  /** Queues lines already joined with newlines (a worker's batch), without the last newline. */
  writeBatch(text: string): void {
    this.write(text);
  }

  /** Resolves once everything queued so far is written. */
  async flush(): Promise<void> {
    while (this.#flushing) await this.#flushing;
  }

  /** Flushes and closes the file. */
  async close(): Promise<void> {
    await this.flush();
    this.#file?.close();
    this.#file = undefined;
  }

  async #flush(): Promise<void> {
    // Let lines gather for a moment, so under load one write carries hundreds of them
    // (like nginx's buffered access_log) instead of costing a write per request.
    await new Promise((resolve) => setTimeout(resolve, BATCH_WINDOW));
    while (this.#len > 0) {
      const full = this.#buf;
      const bytes = full.subarray(0, this.#len);
      // New lines go to the other buffer while this one is written.
      this.#buf = this.#spare ?? new Uint8Array(LINE_BUFFER);
      this.#spare = undefined;
      this.#len = 0;
      const out = this.#file ?? Deno.stdout;
      let written = 0;
      try {
        while (written < bytes.length) written += await out.write(bytes.subarray(written));
      } catch {
        // A closed stdout or full disk must not take the balancer down.
      }
      // Kept even if a burst made it grow: else every later batch would grow a new one again.
      if (full.length <= MAX_SPARE_BUFFER) this.#spare = full;
    }
    this.#flushing = undefined;
  }
}
