/** The logger as an operator reads it: levels filter, text and JSON lines; the batched line writer. */
import assert from "node:assert/strict";
import { type Level, LineWriter, Logger } from "../lib/log.ts";

function capture(level: Level, format: "text" | "json") {
  const lines: string[] = [];
  return { lines, log: new Logger(level, format, (line) => lines.push(line)) };
}

Deno.test("records below the configured level are dropped", () => {
  const { lines, log } = capture("warn", "text");
  log.debug("d");
  log.info("i");
  log.warn("w");
  log.error("e");
  assert.deepEqual(lines.map((l) => l.split(" ").slice(1).join(" ")), ["WARN  w", "ERROR e"]);
  assert.equal(log.enabled("info"), false);
  assert.equal(log.enabled("error"), true);
});

Deno.test("debug level writes everything, error level only errors", () => {
  const all = capture("debug", "text");
  const errors = capture("error", "text");
  for (const { log } of [all, errors]) {
    log.debug("d");
    log.info("i");
    log.warn("w");
    log.error("e");
  }
  assert.equal(all.lines.length, 4);
  assert.equal(errors.lines.length, 1);
  assert.match(errors.lines[0], / ERROR e$/);
});

Deno.test("the default level is info", () => {
  const lines: string[] = [];
  const log = new Logger(undefined, undefined, (line) => lines.push(line));
  log.debug("hidden");
  log.info("shown");
  assert.equal(lines.length, 1);
  assert.ok(lines[0].endsWith(" INFO  shown"), lines[0]);
});

Deno.test("text lines are: ISO time, padded level, message, key=value fields", () => {
  const { lines, log } = capture("info", "text");
  log.info("backend added", { url: "http://127.0.0.1:8081", weight: 2, up: true });
  const [time, ...rest] = lines[0].split(" ");
  assert.equal(new Date(time).toISOString(), time);
  assert.equal(rest.join(" "), "INFO  backend added url=http://127.0.0.1:8081 weight=2 up=true");
});

Deno.test("text field values with spaces, quotes or = are quoted", () => {
  const { lines, log } = capture("info", "text");
  log.warn("x", { cause: "connection refused", expr: "a=b", list: ["a b", "c"] });
  assert.match(lines[0], / x cause="connection refused" expr="a=b" list=/);
  // The array is JSON with quotes in it, so it is quoted once more and stays one token.
  assert.ok(lines[0].endsWith(String.raw`list="[\"a b\",\"c\"]"`), lines[0]);
});

Deno.test("json lines parse and carry time, level, msg and the fields", () => {
  const { lines, log } = capture("debug", "json");
  log.debug("probe", { backend: "a:1", ms: 12 });
  log.error("boom", { problems: ["x: bad", "y: worse"] });
  const records = lines.map((l) => JSON.parse(l));
  assert.deepEqual(Object.keys(records[0]), ["time", "level", "msg", "backend", "ms"]);
  assert.equal(records[0].level, "debug");
  assert.equal(records[0].msg, "probe");
  assert.equal(records[0].ms, 12);
  assert.equal(new Date(records[0].time).toISOString(), records[0].time);
  assert.deepEqual(records[1].problems, ["x: bad", "y: worse"]);
  assert.ok(lines.every((l) => !l.includes("\n")), "one record per line");
});

Deno.test("fields cannot overwrite a json record's time, level or msg", () => {
  const { lines, log } = capture("info", "json");
  log.warn("real message", { level: "debug", msg: "fake", time: "never", extra: 1 });
  const record = JSON.parse(lines[0]);
  assert.equal(record.level, "warn");
  assert.equal(record.msg, "real message");
  assert.notEqual(record.time, "never");
  assert.equal(record.extra, 1);
});

Deno.test("Error values in fields show their message, not {}", () => {
  const text = capture("info", "text");
  const json = capture("info", "json");
  text.log.error("failed", { error: new Error("connection refused") });
  json.log.error("failed", { error: new Error("connection refused") });
  assert.match(text.lines[0], /error="Error: connection refused"$/);
  assert.equal(JSON.parse(json.lines[0]).error, "Error: connection refused");
});

Deno.test("configure switches level and format in place (config reload)", () => {
  const { lines, log } = capture("info", "text");
  log.debug("hidden");
  log.configure("debug", "json");
  log.debug("shown", { n: 1 });
  assert.equal(lines.length, 1);
  assert.equal(JSON.parse(lines[0]).msg, "shown");
});

Deno.test("bigint fields are written as numbers' text instead of throwing", () => {
  const text = capture("info", "text");
  const json = capture("info", "json");
  text.log.info("big", { bytes: 10n ** 20n });
  json.log.info("big", { bytes: 10n ** 20n });
  assert.match(text.lines[0], /bytes=100000000000000000000$/);
  assert.equal(JSON.parse(json.lines[0]).bytes, "100000000000000000000");
});

Deno.test("LineWriter: bursts larger than its buffer are written whole and in order, batch after batch", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/lines.log`;
  const writer = new LineWriter(path);
  const expected: string[] = [];
  // 2,000 lines of ~100 bytes: three times the 64 KB buffer, so it grows; then two more batches
  // reuse the grown buffer and the other one.
  for (const [batch, count] of [[0, 2000], [1, 2000], [2, 10]]) {
    for (let i = 0; i < count; i++) {
      const line = `batch ${batch} line ${i} ${"x".repeat(80)}`;
      writer.write(line);
      expected.push(line);
    }
    await writer.flush();
  }
  await writer.close();
  assert.deepEqual((await Deno.readTextFile(path)).split("\n"), [...expected, ""]);
  await Deno.remove(dir, { recursive: true });
});
