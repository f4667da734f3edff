/**
 * The files a configuration names besides itself (hooks module, certificates, keys, CAs):
 * checked when the config is loaded (`--check`, start, reload), so a broken file is reported
 * with the rest and never half-applied, and watched by `--watch`.
 */
import { X509Certificate } from "node:crypto";
import { type Config, DEFAULT_POOL, listenersOf } from "./config.ts";
import { loadHooks } from "./hooks.ts";
import { loadCertificates } from "./tls/certificates.ts";

/** Every file `config` reads, absolute. */
export function configFiles(config: Config): string[] {
  const files = new Set<string>();
  if (config.hooks) files.add(config.hooks);
  for (const l of listenersOf(config)) {
    for (const c of l.tls?.certificates ?? []) files.add(c.cert).add(c.key);
  }
  for (const { file } of caFiles(config)) files.add(file);
  return [...files];
}

let checks = 0;

/** Problems with the files `config` names, one `field: reason` line each (empty when fine). */
export async function checkFiles(config: Config): Promise<string[]> {
  const problems: string[] = [];
  if (config.hooks) {
    try {
      // Imported under its own version: the running balancer's copy is not disturbed.
      await loadHooks(config.hooks, -(++checks));
    } catch (err) {
      problems.push(`hooks: ${(err as Error).message.replace(/^hooks: /, "")}`);
    }
  }
  listenersOf(config).forEach((l, i) => {
    if (!l.tls) return;
    const at = Array.isArray(config.listen) ? `listen[${i}]` : "listen";
    const loaded = loadCertificates(l.tls.certificates, { field: `${at}.tls.certificates` });
    problems.push(...loaded.problems);
  });
  for (const { field, file } of caFiles(config)) {
    const problem = caProblem(file);
    if (problem) problems.push(`${field}: ${problem}`);
  }
  return problems;
}

/**
 * The backend CA files of `config`, each once, under the first field that names it: a named
 * pool's `tls.ca`, then each backend's own (`backends[i].tls.ca`,
 * `pools.NAME.backends[i].tls.ca`).
 */
function caFiles(config: Config): { field: string; file: string }[] {
  const out: { field: string; file: string }[] = [];
  const seen = new Set<string>();
  const add = (field: string, file: string | undefined) => {
    if (file === undefined || seen.has(file)) return;
    seen.add(file);
    out.push({ field, file });
  };
  for (const pool of config.pools) {
    const named = pool.name !== DEFAULT_POOL || config.backends === undefined;
    const at = named ? `pools.${pool.name}` : "";
    if (named) add(`${at}.tls.ca`, pool.tls?.ca);
    // A named pool without its own list takes the top-level backends.
    const own = named && config.poolsInput?.[pool.name]?.backends !== undefined;
    pool.backends.forEach((b, i) => {
      add(`${own ? `${at}.` : ""}backends[${i}].tls.ca`, b.tls?.ca);
    });
  }
  return out;
}

/** Why `file` is not a usable PEM CA certificate, or undefined when it is. */
function caProblem(file: string): string | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound
      ? "no such file"
      : err instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : err instanceof Deno.errors.IsADirectory
      ? "is a directory"
      : err instanceof TypeError || err instanceof Deno.errors.InvalidData
      ? "not text (binary or DER?)"
      : (err as Error).message;
    return `cannot read: ${why} (${file})`;
  }
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g);
  if (!blocks) return `not a PEM certificate (no BEGIN CERTIFICATE block) (${file})`;
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch (err) {
      return `cannot parse the certificate: ${(err as Error).message} (${file})`;
    }
  }
  return undefined;
}
