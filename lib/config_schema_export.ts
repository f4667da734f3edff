/** Writes config.schema.json (the config file's JSON Schema, for editors) from the zod schema: `deno task schema`. */
import { configJsonSchema } from "./config.ts";

/** Where the generated schema lives: the repository root, next to sluice.yaml. */
export const SCHEMA_PATH: URL = new URL("../config.schema.json", import.meta.url);

/** The exact text config.schema.json must contain. */
export function configSchemaText(): string {
  return JSON.stringify(configJsonSchema(), null, 2) + "\n";
}

if (import.meta.main) {
  await Deno.writeTextFile(SCHEMA_PATH, configSchemaText());
  console.log(`wrote ${SCHEMA_PATH.pathname}`);
}
