/** A request body read once from the client, replayable for a retry while it fits the replay buffer. */
import type { TrailedStream } from "../message.ts";

/** Wraps the client's body stream, remembering up to `limit` bytes so a retry can resend them. */
export class RequestBody {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  /** Chunks read so far, while they fit the limit; cleared once the body outgrows it. */
  readonly #kept: Uint8Array[] = [];
  #keptBytes = 0;
  #overflow = false;
  #ended = false;
  #failed = false;
  #error: unknown;
  /** The read in progress, shared so an abandoned attempt and its retry never read concurrently. */
  #reading: Promise<Uint8Array | null> | undefined;
  readonly #trailers: (() => [string, string][] | undefined) | undefined;

  constructor(stream: ReadableStream<Uint8Array>, readonly limit: number) {
    this.#reader = stream.getReader();
    this.#trailers = (stream as TrailedStream).trailers;
  }

  /** The trailer fields that ended the client's chunked body, once it has ended (else undefined). */
  trailers(): [string, string][] | undefined {
    return this.#ended ? this.#trailers?.() : undefined;
  }

  /** True once reading the client's body failed (a malformed chunk, an aborted upload): the client's fault. */
  get failed(): boolean {
    return this.#failed;
  }

  /** Why reading the client's body failed. */
  get error(): unknown {
    return this.#error;
  }

  /** The client's body failed because it grew past `limits.maxBodySize`. */
  get tooLarge(): boolean {
    return (this.#error as Error | undefined)?.name === "BodyTooLarge";
  }

  /** Whether the body can be sent again from its first byte. */
  rewind(): boolean {
    return !this.#overflow;
  }

  /**
   * Reads ahead until the body has ended or more than `limit` bytes are held (request
   * buffering); throws when the client's body fails.
   */
  async prefetch(limit: number): Promise<void> {
    while (!this.#ended && !this.#overflow && this.#keptBytes <= limit) {
      await (this.#reading ??= this.#read());
    }
  }

  /** The body's chunks from the start: kept bytes first, then the rest of the client's stream. */
  async *chunks(): AsyncGenerator<Uint8Array> {
    if (this.#overflow) throw new Error("request body can no longer be replayed");
    let i = 0;
    for (;;) {
      if (!this.#overflow && i < this.#kept.length) {
        yield this.#kept[i++];
        continue;
      }
      if (this.#ended) return;
      const chunk = await (this.#reading ??= this.#read());
      if (chunk === null) return;
      if (this.#overflow) yield chunk;
      // Otherwise the chunk is in #kept and the next turn yields it in order.
    }
  }

  async #read(): Promise<Uint8Array | null> {
    try {
      let next: ReadableStreamReadResult<Uint8Array>;
      try {
        next = await this.#reader.read();
      } catch (err) {
        this.#failed = true;
        this.#error = err;
        throw err;
      }
      const { value, done } = next;
      if (done) {
        this.#ended = true;
        return null;
      }
      if (!this.#overflow) {
        this.#keptBytes += value.length;
        if (this.#keptBytes > this.limit) {
          this.#overflow = true;
          this.#kept.length = 0;
        } else this.#kept.push(value);
      }
      return value;
    } finally {
      this.#reading = undefined;
    }
  }

  /** Releases the client's stream (after the exchange is over). */
  cancel(): void {
    if (!this.#ended) this.#reader.cancel().catch(() => {});
  }
}
