/** Bearer-token checks for the admin listener. */

const encoder = new TextEncoder();

async function digest(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

/**
 * Whether an `Authorization` header carries `Bearer <token>`. Both sides are hashed first so
 * the comparison takes the same time whatever the length or content of the guess.
 */
export async function bearerMatches(header: string | null, token: string): Promise<boolean> {
  const match = header === null ? null : /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  const [given, expected] = await Promise.all([digest(match?.[1] ?? ""), digest(token)]);
  let diff = match ? 0 : 1;
  for (let i = 0; i < expected.length; i++) diff |= given[i] ^ expected[i];
  return diff === 0;
}
