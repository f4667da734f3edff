/** A request body read once from the client, replayable for a retry while it fits the replay buffer. */

/** Wraps the client's body stream, remembering up to `limit` bytes so a retry can resend them. */
export class RequestBody {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #kept: Uint8Array[] = [];
  #keptBytes = 0;
  #overflow = false;
  #ended = false;
  /** True once reading has started on some attempt. */
  started = false;

  constructor(stream: ReadableStream<Uint8Array>, readonly limit: number) {
    this.#reader = stream.getReader();
  }

  /** Whether every byte read so far is still kept, so the body can be sent again from the start. */
  get replayable(): boolean {
    return !this.#overflow;
  }

  /** Prepares to send again from the start; returns false if bytes were already let go. */
  rewind(): boolean {
    return !this.#overflow;
  }

  /** The body's chunks from the start: kept bytes first, then the rest of the client's stream. */
  async *chunks(): AsyncGenerator<Uint8Array> {
    this.started = true;
    if (this.#overflow) throw new Error("request body can no longer be replayed");
    const kept = this.#kept.length;
    for (let i = 0; i < kept; i++) yield this.#kept[i];
    while (!this.#ended) {
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#ended = true;
        break;
      }
      if (!this.#overflow) {
        this.#keptBytes += value.length;
        if (this.#keptBytes > this.limit) {
          this.#overflow = true;
          this.#kept.length = 0;
        } else this.#kept.push(value);
      }
      yield value;
    }
  }

  /** Releases the client's stream (after the exchange is over). */
  cancel(): void {
    if (!this.#ended) this.#reader.cancel().catch(() => {});
  }
}
