/**
 * `deno task demo`: three demo backends on 8081-8083, the balancer on 8080 in front of them
 * (config: sluice.yaml), and the admin dashboard on 127.0.0.1:9090. Ctrl-C stops everything.
 */
import { startBackend } from "./backend.ts";
import { startAdmin } from "./lib/admin/server.ts";
import { startBalancer } from "./lib/balancer.ts";
import { applyOverrides, readConfigFile, validateConfig } from "./lib/config.ts";
import { Logger } from "./lib/log.ts";

const token = Array.from(
  crypto.getRandomValues(new Uint8Array(16)),
  (b) => b.toString(16).padStart(2, "0"),
).join("");
const raw = await readConfigFile(new URL("./sluice.yaml", import.meta.url).pathname);
const config = validateConfig({
  ...applyOverrides(raw, { healthInterval: "2s" }),
  admin: { host: "127.0.0.1", port: 9090, token },
});

const backends = await Promise.all(
  [8081, 8082, 8083].map((port) => startBackend({ hostname: "127.0.0.1", port })),
);
const log = new Logger(config.log.level, config.log.format);
const balancer = await startBalancer(config, log);
const admin = await startAdmin(balancer, config.admin!);

console.log(`
sluice demo
  backends:   ${backends.map((b) => `http://127.0.0.1:${b.port}`).join("  ")}
  balancer:   http://localhost:${balancer.addr.port}   (try: curl localhost:${balancer.addr.port})
  dashboard:  http://127.0.0.1:${admin.addr.port}/#token=${token}
  metrics:    http://127.0.0.1:${admin.addr.port}/metrics
  admin API:  curl -H 'Authorization: Bearer ${token}' http://127.0.0.1:${admin.addr.port}/api/status

Stop a backend's health with: curl localhost:8082/health/off   (and /health/on)
Ctrl-C to stop.
`);

const stop = async () => {
  await Promise.all([balancer.shutdown(), admin.shutdown(), ...backends.map((b) => b.shutdown())]);
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
