/** A request body read once from the client, replayable for a retry while it fits the replay buffer. */
import type { TrailedStream } from "../message.ts";
import { isPieceStream, recyclePiece } from "../http1/connection.ts";

/** Wraps the client's body stream, remembering up to `limit` bytes so a retry can resend them. */
export class RequestBody {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  /** Chunks read so far, up to the one that outgrows the limit; let go once sent after that. */
  readonly #kept: Uint8Array[] = [];
  #keptBytes = 0;
  #overflow = false;
  /** Whether any attempt has been given a chunk (after an overflow, no other attempt may start). */
  #yielded = false;
  #ended = false;
  #failed = false;
  #error: unknown;
  /** The read in progress, shared so an abandoned attempt and its retry never read concurrently. */
  #reading: Promise<Uint8Array | null> | undefined;
  readonly #trailers: (() => [string, string][] | undefined) | undefined;
  /** The stream's chunks are pieces of the client connection that no one else holds. */
  readonly #pieces: boolean;

  constructor(stream: ReadableStream<Uint8Array>, readonly limit: number) {
    this.#pieces = isPieceStream(stream);
    this.#reader = stream.getReader();
    this.#trailers = (stream as TrailedStream).trailers;
  }

  /**
   * `chunk`, from {@linkcode chunks}, has been written upstream. A piece of the client
   * connection that is not kept for a retry goes back for the connection's next read: without
   * this an upload allocated (and zeroed) a new 128 KiB piece for every read. Until the body
   * outgrows the limit every chunk is kept, so only then is there anything to look up.
   */
  written(chunk: Uint8Array): void {
    if (this.#pieces && this.#overflow && !this.#kept.includes(chunk)) recyclePiece(chunk);
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

  /**
   * The body's chunks from the start: kept bytes first, then the rest of the client's stream.
   * Once the body has outgrown the limit it can be streamed once more from what is held, and the
   * held bytes are let go as they are sent.
   */
  async *chunks(): AsyncGenerator<Uint8Array> {
    if (this.#overflow && this.#yielded) throw new Error("request body can no longer be replayed");
    let i = 0;
    for (;;) {
      if (i < this.#kept.length) {
        this.#yielded = true;
        yield this.#kept[i++];
        continue;
      }
      if (this.#overflow && i > 0) {
        this.#kept.length = 0; // sent, and never needed again
        i = 0;
      }
      if (this.#ended) return;
      const chunk = await (this.#reading ??= this.#read());
      if (chunk === null) return;
      // A chunk that was kept is yielded in order on the next turn.
      if (i >= this.#kept.length) {
        this.#yielded = true;
        yield chunk;
      }
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
        // The chunk that outgrows the limit is kept too: nothing read may be lost before the
        // first attempt sends it.
        this.#kept.push(value);
        this.#keptBytes += value.length;
        if (this.#keptBytes > this.limit) this.#overflow = true;
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
