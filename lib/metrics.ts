/** Prometheus metrics: counters, gauges and histograms with labels, rendered in the text exposition format. */

type Labels = readonly string[];

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function labelText(names: Labels, values: Labels, extra = ""): string {
  if (names.length === 0 && !extra) return "";
  const parts = names.map((n, i) => `${n}="${escapeLabel(values[i])}"`);
  if (extra) parts.push(extra);
  return `{${parts.join(",")}}`;
}

function formatNumber(n: number): string {
  if (n === Infinity) return "+Inf";
  if (n === -Infinity) return "-Inf";
  if (Number.isNaN(n)) return "NaN";
  return String(n);
}

interface Metric {
  render(out: string[]): void;
}

/** A monotonically increasing count, per label set. */
export class Counter implements Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string, readonly labelNames: Labels = []) {}

  /** Adds `n` (default 1) for the given label values. */
  inc(labels: Labels = [], n = 1): void {
    this.cell(labels).value += n;
  }

  /** The mutable entry for a label set, for callers that cache it to skip the lookup. */
  cell(labels: Labels): { value: number } {
    const key = labels.join("\u0000");
    let entry = this.#values.get(key);
    if (!entry) {
      entry = { labels: [...labels], value: 0 };
      this.#values.set(key, entry);
    }
    return entry;
  }

  /** The current value for a label set (0 if never incremented). */
  get(labels: Labels = []): number {
    return this.#values.get(labels.join("\u0000"))?.value ?? 0;
  }

  /** Every label set and its value, to be merged elsewhere. */
  dump(): [string[], number][] {
    return [...this.#values.values()].map(({ labels, value }) => [[...labels], value]);
  }

  /** Adds dumped values to this counter's. */
  merge(rows: readonly (readonly [readonly string[], number])[]): void {
    for (const [labels, value] of rows) this.cell(labels).value += value;
  }

  /** Forgets every value. */
  clear(): void {
    this.#values.clear();
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`);
    for (const { labels, value } of this.#values.values()) {
      out.push(`${this.name}${labelText(this.labelNames, labels)} ${formatNumber(value)}`);
    }
  }
}

/** A value read at scrape time from a callback that yields [label values, value] pairs. */
export class Gauge implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: Labels,
    readonly collect: () => Iterable<readonly [Labels, number]>,
  ) {}

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`);
    for (const [labels, value] of this.collect()) {
      out.push(`${this.name}${labelText(this.labelNames, labels)} ${formatNumber(value)}`);
    }
  }
}

/** Default latency buckets in seconds, from 1 ms to 30 s. */
export const LATENCY_BUCKETS = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
];

/** A cumulative histogram per label set. */
export class Histogram implements Metric {
  readonly #series = new Map<
    string,
    { labels: Labels; counts: Float64Array; sum: number; observe(value: number): void }
  >();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: Labels = [],
    readonly buckets: readonly number[] = LATENCY_BUCKETS,
  ) {}

  /** Records one observation. */
  observe(labels: Labels, value: number): void {
    this.series(labels).observe(value);
  }

  /** The series for a label set, for callers that cache it to skip the lookup. */
  series(labels: Labels): { observe(value: number): void } {
    const key = labels.join("\u0000");
    let series = this.#series.get(key);
    if (!series) {
      const buckets = this.buckets;
      const counts = new Float64Array(buckets.length + 1);
      const created = {
        labels: [...labels],
        counts,
        sum: 0,
        observe(value: number) {
          let i = 0;
          while (i < buckets.length && value > buckets[i]) i++;
          counts[i]++;
          created.sum += value;
        },
      };
      series = created;
      this.#series.set(key, series);
    }
    return series;
  }

  /** Every series as [labels, bucket counts, sum], to be merged elsewhere. */
  dump(): [string[], number[], number][] {
    return [...this.#series.values()].map((s) => [[...s.labels], [...s.counts], s.sum]);
  }

  /** Adds dumped series to this histogram's. */
  merge(rows: readonly (readonly [readonly string[], readonly number[], number])[]): void {
    for (const [labels, counts, sum] of rows) {
      this.series(labels);
      const s = this.#series.get(labels.join("\u0000"))!;
      for (let i = 0; i < s.counts.length; i++) s.counts[i] += counts[i] ?? 0;
      s.sum += sum;
    }
  }

  /** Forgets every series. */
  clear(): void {
    this.#series.clear();
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`);
    for (const { labels, counts, sum } of this.#series.values()) {
      let cumulative = 0;
      for (let i = 0; i <= this.buckets.length; i++) {
        cumulative += counts[i];
        const le = i === this.buckets.length ? "+Inf" : formatNumber(this.buckets[i]);
        out.push(
          `${this.name}_bucket${labelText(this.labelNames, labels, `le="${le}"`)} ${cumulative}`,
        );
      }
      out.push(`${this.name}_sum${labelText(this.labelNames, labels)} ${formatNumber(sum)}`);
      out.push(`${this.name}_count${labelText(this.labelNames, labels)} ${cumulative}`);
    }
  }
}

/** A set of metrics rendered together. */
export class Registry {
  readonly #metrics: Metric[] = [];

  /** Registers and returns a metric. */
  add<M extends Metric>(metric: M): M {
    this.#metrics.push(metric);
    return metric;
  }

  /** The whole exposition, Prometheus text format 0.0.4. */
  render(): string {
    const out: string[] = [];
    for (const m of this.#metrics) m.render(out);
    return out.join("\n") + "\n";
  }
}
