/** Durations as users write them in sluice.yaml and on the command line. */
import assert from "node:assert/strict";
import { formatDuration, MAX_DURATION, parseDuration } from "../lib/duration.ts";

Deno.test("parseDuration reads ms, s, m and h", () => {
  assert.equal(parseDuration("250ms"), 250);
  assert.equal(parseDuration("2s"), 2_000);
  assert.equal(parseDuration("1m"), 60_000);
  assert.equal(parseDuration("1h"), 3_600_000);
});

Deno.test("parseDuration accepts fractions, rounded to whole milliseconds", () => {
  assert.equal(parseDuration("1.5s"), 1_500);
  assert.equal(parseDuration("0.25m"), 15_000);
  assert.equal(parseDuration("1.5ms"), 2);
  assert.equal(parseDuration(1.5), 2, "a bare number rounds like a numeric string");
});

Deno.test("parseDuration treats a bare number or numeric string as milliseconds", () => {
  assert.equal(parseDuration(1500), 1_500);
  assert.equal(parseDuration("1500"), 1_500);
  assert.equal(parseDuration(0), 0);
  assert.equal(parseDuration("0"), 0);
});

Deno.test("parseDuration tolerates blanks around and between number and unit", () => {
  assert.equal(parseDuration(" 2s "), 2_000);
  assert.equal(parseDuration("2 s"), 2_000);
});

Deno.test("parseDuration rejects what is not a duration", () => {
  for (
    const bad of [
      "",
      " ",
      "s",
      "2x",
      "2S",
      "1d",
      "2sec",
      "10 seconds",
      "-1s",
      "+1s",
      "1e3",
      "1m30s",
      ".5s",
      "5.s",
      "0x10",
      "2s extra",
    ]
  ) {
    assert.equal(parseDuration(bad), undefined, JSON.stringify(bad));
  }
  for (const bad of [-1, NaN, Infinity, -Infinity]) {
    assert.equal(parseDuration(bad), undefined, String(bad));
  }
});

Deno.test("formatDuration prints the largest exact unit", () => {
  assert.equal(formatDuration(0), "0ms");
  assert.equal(formatDuration(250), "250ms");
  assert.equal(formatDuration(1_500), "1500ms");
  assert.equal(formatDuration(2_000), "2s");
  assert.equal(formatDuration(90_000), "90s");
  assert.equal(formatDuration(60_000), "1m");
  assert.equal(formatDuration(5_400_000), "90m");
  assert.equal(formatDuration(7_200_000), "2h");
});

Deno.test("formatDuration output parses back to the same value", () => {
  for (const ms of [0, 1, 999, 1_000, 1_001, 59_999, 60_000, 3_600_000, MAX_DURATION]) {
    assert.equal(parseDuration(formatDuration(ms)), ms);
  }
});
