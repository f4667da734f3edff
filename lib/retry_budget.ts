/** A retry budget: retries may add at most a share of the request rate, so failures cannot snowball. */

/** Allows retries up to `percent`% of requests per second, and always at least `minPerSecond`. */
export class RetryBudget {
  #second = 0;
  #requests = 0;
  #retries = 0;
  #previousRequests = 0;

  constructor(public percent: number, public minPerSecond: number) {}

  /** Counts a client request. */
  request(now = Date.now()): void {
    this.#roll(now);
    this.#requests++;
  }

  /** Takes one retry from the budget; false when the budget is spent. */
  tryRetry(now = Date.now()): boolean {
    this.#roll(now);
    // The previous second's rate keeps the budget steady across the window boundary.
    const rate = Math.max(this.#requests, this.#previousRequests);
    const allowed = Math.max(this.minPerSecond, (rate * this.percent) / 100);
    if (this.#retries + 1 > allowed) return false;
    this.#retries++;
    return true;
  }

  #roll(now: number): void {
    const second = Math.floor(now / 1000);
    if (second === this.#second) return;
    this.#previousRequests = second === this.#second + 1 ? this.#requests : 0;
    this.#second = second;
    this.#requests = 0;
    this.#retries = 0;
  }
}
