/**
 * bench/peers.ts: the nginx and HAProxy that `deno task bench` compares sluice with do to a
 * request what sluice does by default, so that the benchmark compares proxies doing the same
 * job. Each is run for real in front of a backend that echoes what it received.
 */
import assert from "node:assert/strict";
import { haproxyConfig, nginxConfig, type NginxSpec } from "../bench/peers.ts";
import { freePort } from "../bench/proc.ts";
import { rawExchange, startTestBalancer, waitFor } from "./helpers.ts";
import { need } from "./process_helpers.ts";

const missingNginx = await need("nginx", "nginx");
const missingHaproxy = await need("haproxy", "haproxy");
if (missingNginx) console.warn(`skipping the bench's nginx peer: ${missingNginx}`);
if (missingHaproxy) console.warn(`skipping the bench's HAProxy peer: ${missingHaproxy}`);

/** What the backend saw of the fields sluice sets, and the id the client got back. */
interface Seen {
  host: string | null;
  forwardedFor: string | null;
  forwardedProto: string | null;
  forwardedHost: string | null;
  requestId: string | null;
  returnedId: string | undefined;
}

/** A backend that answers with the request's headers, and an X-Request-Id of its own. */
function echoBackend(): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) =>
      Response.json(Object.fromEntries(req.headers), {
        headers: { "x-request-id": "from-the-backend" },
      }),
  );
}

/** Sends the same request through the proxy on `port`, with the client's own forwarded fields. */
async function through(port: number, clientId?: string): Promise<Seen> {
  const text = await rawExchange(
    port,
    "GET /seen HTTP/1.1\r\nHost: app.example:8080\r\nX-Forwarded-For: 203.0.113.7\r\n" +
      "X-Forwarded-Proto: https\r\nX-Forwarded-Host: elsewhere.example\r\n" +
      (clientId ? `X-Request-Id: ${clientId}\r\n` : "") + "Connection: close\r\n\r\n",
  );
  const end = text.indexOf("\r\n\r\n");
  const head = text.slice(0, end);
  assert.match(head, /^HTTP\/1\.1 200 /, text);
  let body = text.slice(end + 4);
  if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
    body = body.slice(body.indexOf("\r\n") + 2, body.lastIndexOf("\r\n0\r\n"));
  }
  const got = JSON.parse(body) as Record<string, string>;
  return {
    host: got["host"] ?? null,
    forwardedFor: got["x-forwarded-for"] ?? null,
    forwardedProto: got["x-forwarded-proto"] ?? null,
    forwardedHost: got["x-forwarded-host"] ?? null,
    requestId: got["x-request-id"] ?? null,
    returnedId: /\r\nx-request-id: *([^\r]*)/i.exec(head)?.[1],
  };
}

/** The job sluice does by default, as the backend and the client see it. */
async function assertSameJob(port: number): Promise<void> {
  const fresh = await through(port);
  assert.deepEqual({ ...fresh, requestId: undefined, returnedId: undefined }, {
    host: "app.example:8080",
    forwardedFor: "127.0.0.1",
    forwardedProto: "http",
    forwardedHost: "app.example:8080",
    requestId: undefined,
    returnedId: undefined,
  });
  assert.ok(fresh.requestId && fresh.requestId !== "from-the-backend", fresh.requestId ?? "");
  assert.equal(fresh.returnedId, fresh.requestId);
  const again = await through(port);
  assert.notEqual(again.requestId, fresh.requestId);
  const kept = await through(port, "client-7");
  assert.equal(kept.requestId, "client-7");
  assert.equal(kept.returnedId, "client-7");
}

/** Runs `cmd` until disposed, once `port` accepts connections. */
async function startPeer(cmd: string, args: string[], port: number, dir: string) {
  const child = new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).spawn();
  const stderr = new Response(child.stderr).text();
  try {
    await waitFor(
      async () => {
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port })).close();
          return true;
        } catch {
          return false;
        }
      },
      `${cmd} to listen on ${port}`,
      20_000,
    );
  } catch (err) {
    child.kill();
    await child.status;
    throw new Error(`${cmd} did not start: ${await stderr}`, { cause: err });
  }
  return {
    async [Symbol.asyncDispose]() {
      child.kill("SIGTERM");
      await child.status;
      await stderr;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** nginx as the bench sets it up (`spec`), in front of the backend on `backendPort`. */
async function startNginx(spec: NginxSpec, backendPort: number) {
  const dir = await Deno.makeTempDir({ prefix: "sluice-nginx-" });
  // As root, nginx's workers run as an unprivileged user: let them reach the directory.
  await Deno.chmod(dir, 0o755);
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    await nginxConfig(spec, { port, backendPorts: [backendPort], dir }),
  );
  const args = ["-p", dir, "-e", `${dir}/error.log`, "-c", `${dir}/nginx.conf`];
  return { port, ...await startPeer("nginx", args, port, dir) };
}

Deno.test("sluice's default job, as the bench's nginx and HAProxy are checked against", async () => {
  await using backend = echoBackend();
  await using lb = await startTestBalancer({
    backends: [{ url: `http://127.0.0.1:${backend.addr.port}` }],
  });
  await assertSameJob(lb.balancer.addr.port);
});

Deno.test({
  name: "the bench's nginx does to a request what sluice does by default",
  ignore: missingNginx !== undefined,
}, async () => {
  await using backend = echoBackend();
  await using nginx = await startNginx({ workers: 1 }, backend.addr.port);
  await assertSameJob(nginx.port);
});

Deno.test({
  name: "the bench's bare nginx does not: Host is rewritten and nothing is added",
  ignore: missingNginx !== undefined,
}, async () => {
  await using backend = echoBackend();
  await using nginx = await startNginx({ workers: 1, bare: true }, backend.addr.port);
  const seen = await through(nginx.port);
  assert.equal(seen.host, "backends");
  assert.equal(seen.forwardedFor, "203.0.113.7");
  assert.equal(seen.requestId, null);
  assert.equal(seen.returnedId, "from-the-backend");
});

Deno.test({
  name: "the bench's HAProxy does to a request what sluice does by default",
  ignore: missingHaproxy !== undefined,
}, async () => {
  await using backend = echoBackend();
  const dir = await Deno.makeTempDir({ prefix: "sluice-haproxy-" });
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/haproxy.cfg`,
    await haproxyConfig(1, { port, backendPorts: [backend.addr.port] }),
  );
  await using _haproxy = await startPeer(
    "haproxy",
    ["-db", "-f", `${dir}/haproxy.cfg`],
    port,
    dir,
  );
  await assertSameJob(port);
});
