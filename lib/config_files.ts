/**
 * The files a configuration names besides itself (hooks module, certificates, keys, CAs):
 * checked when the config is loaded (`--check`, start, reload), so a broken file is reported
 * with the rest and never half-applied, and watched by `--watch`.
 */
import type { Config } from "./config.ts";
import { loadHooks } from "./hooks.ts";

/** Every file `config` reads, absolute. */
export function configFiles(config: Config): string[] {
  const files: string[] = [];
  if (config.hooks) files.push(config.hooks);
  return files;
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
  return problems;
}
