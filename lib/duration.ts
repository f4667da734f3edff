/** Parsing and printing of durations such as `250ms`, `2s`, `1m`, `1h`. */

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const PATTERN = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/;
/** What a duration string looks like (as a JSON Schema-compatible pattern; surrounding blanks allowed). */
export const DURATION_PATTERN: string = "^\\s*\\d+(\\.\\d+)?\\s*(ms|s|m|h)?\\s*$";
/** The longest duration timers accept (2^31-1 ms, about 24.8 days); longer ones would fire at once. */
export const MAX_DURATION: number = 2 ** 31 - 1;

/** Parses a duration to whole milliseconds; a bare number (or numeric string) is milliseconds. Returns undefined if invalid. */
export function parseDuration(input: string | number): number | undefined {
  if (typeof input === "number") {
    // Rounded like strings are, so `1.5` and `"1.5"` mean the same.
    return Number.isFinite(input) && input >= 0 ? Math.round(input) : undefined;
  }
  if (typeof input !== "string") return undefined;
  const match = PATTERN.exec(input.trim());
  if (!match) return undefined;
  return Math.round(Number(match[1]) * UNITS[match[2] ?? "ms"]);
}

/** Formats milliseconds as the shortest exact duration string (`1500ms`, `2s`, `1m`). */
export function formatDuration(ms: number): string {
  for (const unit of ["h", "m", "s"]) {
    const size = UNITS[unit];
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
