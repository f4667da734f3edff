/** The bounded wait queue used when every candidate backend is at its connection limit. */

/** Waiters for a free backend slot, oldest first; at most `maxPending` wait, each for at most `timeout` ms. */
export class SlotQueue {
  readonly #waiters: (() => void)[] = [];

  constructor(public maxPending: number, public timeout: number) {}

  /** Requests waiting now. */
  get pending(): number {
    return this.#waiters.length;
  }

  /** Waits for a slot; resolves false at once when the queue is full, or after the timeout. */
  wait(): Promise<boolean> {
    if (this.#waiters.length >= this.maxPending) return Promise.resolve(false);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        const i = this.#waiters.indexOf(wake);
        if (i !== -1) this.#waiters.splice(i, 1);
        resolve(false);
      }, this.timeout);
      this.#waiters.push(wake);
    });
  }

  /** A slot was freed: wake the oldest waiter. */
  notify(): void {
    if (this.#waiters.length) this.#waiters.shift()!();
  }
}
