/** Admin listener (placeholder until the admin API lands). */
import type { Balancer } from "../balancer.ts";

/** A running admin listener. */
export interface AdminServer {
  readonly addr: Deno.NetAddr;
  shutdown(): Promise<void>;
}

/** Starts the admin listener. */
export function startAdmin(
  _balancer: Balancer,
  _options: { host: string; port: number; token?: string },
): Promise<AdminServer> {
  throw new Error("not yet");
}
