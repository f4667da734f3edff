/**
 * The public types of sluice's request hooks, for the module a configuration names with
 * `hooks: ./hooks.ts`. Import them as types only, so the hooks module loads nothing else:
 *
 * ```ts
 * import type { Hooks } from "./mod.ts"; // or the path or URL of this file
 *
 * export default {
 *   onRequest(req, ctx) {
 *     // Answer without a backend: return a Fetch Response.
 *     if (req.path === "/ping") return new Response("pong\n");
 *     // Choose a pool by name; rewrite what the backend receives.
 *     if (req.header("x-tenant") === "beta") ctx.pool = "beta";
 *     req.setHeader("x-tenant-seen", "1");
 *   },
 *   onResponse(res, ctx) {
 *     res.headers.set("x-served-by", ctx.backend.name);
 *   },
 * } satisfies Hooks;
 * ```
 *
 * Either hook may be `async`. `onRequest` runs after routing and before a backend is chosen,
 * for requests whose route sends them to a pool (and for requests no route matches);
 * `onResponse` runs when the backend's response head arrives. A hook that throws, or whose
 * promise rejects, answers that one request with `500`, logged with its request id.
 *
 * Hooks run inside the balancer with its own Deno permissions: they can do whatever the
 * balancer can.
 *
 * `deno check hooks.ts` type-checks a hooks module against these types, so a wrong use
 * (`ctx.pool = 1`, `res.headers.set(1, "x")`) is a compile error before it is deployed.
 *
 * @module
 */
export type {
  HookRequest,
  HookResponse,
  Hooks,
  RequestContext,
  ResponseContext,
} from "./lib/hooks.ts";
