import assert from "node:assert/strict";

/**
 * `deno task compile` needs denort, which deno downloads unless DENORT_BIN points at one.
 * Where neither works (these build machines have no route to the download host) the test
 * is ignored and prints why.
 */
/** Removes terminal colour codes. */
function stripAnsi(text: string): string {
  const esc = String.fromCharCode(27);
  return text.split(esc).map((part, i) => i === 0 ? part : part.replace(/^\[[0-9;]*m/, "")).join(
    "",
  );
}

const dir = await Deno.makeTempDir();
const binary = `${dir}/sluice`;
/** The `compile` task's own words, with the binary written to the temp dir instead of dist/. */
function compileArgs(): string[] {
  const tasks = JSON.parse(Deno.readTextFileSync(new URL("../deno.json", import.meta.url))).tasks;
  const words: string[] = tasks.compile.split(/\s+/);
  const args = words.slice(words.indexOf("compile"));
  args[args.indexOf("--output") + 1] = binary;
  return args;
}
const compile = await new Deno.Command(Deno.execPath(), {
  args: compileArgs(),
  cwd: new URL("../", import.meta.url),
  stdout: "piped",
  stderr: "piped",
  signal: AbortSignal.timeout(120_000),
}).output();
/**
 * The real cause from Deno's error chain: the first cause naming the failed download (its URL
 * and the network error), else the innermost cause, else the `error:` line.
 */
function cause(stderr: string): string {
  const lines = stripAnsi(stderr).split("\n").map((l) => l.trim());
  const causes = lines.map((l) => /^\d+: (.*)$/.exec(l)?.[1]).filter((c) => c !== undefined);
  return causes.find((c) => /error sending request|download/i.test(c!)) ?? causes.at(-1) ??
    lines.find((l) => l.startsWith("error:")) ?? "no error message";
}
const errorLine = cause(new TextDecoder().decode(compile.stderr));
const unavailable = !compile.success && !Deno.env.get("DENORT_BIN");
if (unavailable) {
  console.log(
    `compile test skipped: denort could not be downloaded and DENORT_BIN is not set (${errorLine})`,
  );
  await Deno.remove(dir, { recursive: true });
}

Deno.test({
  name: "deno task compile builds a standalone binary that answers --version",
  ignore: unavailable,
  async fn() {
    try {
      assert.ok(compile.success, `compile failed with DENORT_BIN set: ${errorLine}`);
      const run = await new Deno.Command(binary, { args: ["--version"], stdout: "piped" }).output();
      assert.ok(run.success);
      assert.match(new TextDecoder().decode(run.stdout), /^sluice \d+\.\d+\.\d+/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
