/** The bounded wait queue used when every candidate backend is at its connection limit. */

/** Waiters for a free backend slot, oldest first; at most `maxPending` wait, each for at most `timeout` ms. */
export class SlotQueue {
  readonly #waiters: (() => void)[] = [];

  constructor(public maxPending: number, public timeout: number) {}

  /** Requests waiting now. */
  get pending(): number {
    return this.#waiters.length;
  }

  /**
   * Waits for a slot; resolves false at once when the queue is full, or after `timeout` ms
   * (the configured `queueTimeout` by default; a request that waits again after losing a
   * freed slot passes what is left of its own).
   */
  wait(timeout = this.timeout): Promise<boolean> {
    if (this.#waiters.length >= this.maxPending || timeout <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        const i = this.#waiters.indexOf(wake);
        if (i !== -1) this.#waiters.splice(i, 1);
        resolve(false);
      }, timeout);
      this.#waiters.push(wake);
    });
  }

  /** A slot was freed: wake the oldest waiter. */
  notify(): void {
    if (this.#waiters.length) this.#waiters.shift()!();
  }
}
