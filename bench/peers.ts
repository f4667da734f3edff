/**
 * The peers `deno task bench` compares sluice with, as configuration files: nginx and HAProxy
 * balancing over the same backends and, unless asked for nginx's bare defaults, doing to each
 * request what sluice does by default (docs/configuration.md, "What the backend sees").
 */

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** How an nginx under test is set up. */
export interface NginxSpec {
  workers: number;
  tls?: boolean;
  h2?: boolean;
  /** Ten `location` blocks, as sluice's ten routes. */
  routes?: boolean;
  /** worker_connections (and the descriptor limit). @default 1024 */
  connections?: number;
  /**
   * nginx's defaults only: the request goes up with Host rewritten to the upstream's name and
   * nothing added. Otherwise nginx does what sluice does to every request by default.
   * @default false
   */
  bare?: boolean;
}

/** Where an nginx or HAProxy under test listens and what it balances over. */
export interface PeerPlace {
  port: number;
  backendPorts: readonly number[];
  /** nginx only (and required there): the directory for its pid file, logs and temp files. */
  dir?: string;
  /** nginx only: PEM files, for `tls` and `h2`. */
  cert?: { cert: string; key: string };
}

const PROXY = 'proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection "";';
/**
 * sluice's default additions, done by nginx: Host kept; X-Forwarded-For, -Proto and -Host set,
 * replacing the client's; the client's X-Request-Id kept, or a new one made, sent up and returned.
 */
const SAME_JOB =
  " proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $remote_addr;" +
  " proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host;" +
  " proxy_set_header X-Request-Id $sluice_id; proxy_hide_header X-Request-Id;" +
  " add_header X-Request-Id $sluice_id always;";
const SAME_JOB_HTTP =
  '  map $http_x_request_id $sluice_id { "" $request_id; default $http_x_request_id; }';

function fill(template: string, slots: Record<string, string>): string {
  return template.replace(/\{\{(\w+)\}\}/g, (_, k) => {
    if (!(k in slots)) throw new Error(`template slot {{${k}}} has no value`);
    return slots[k];
  });
}

/** nginx.conf for `spec` at `place`, from `bench/nginx.conf.template`. */
export async function nginxConfig(
  spec: NginxSpec,
  place: PeerPlace & { dir: string },
): Promise<string> {
  if ((spec.tls || spec.h2) && !place.cert) throw new Error("nginx with TLS needs a certificate");
  const paths = spec.routes ? [...Array.from({ length: 9 }, (_, i) => `/r${i}`), "/"] : ["/"];
  const connections = spec.connections ?? 1024;
  return fill(await Deno.readTextFile(`${ROOT}/bench/nginx.conf.template`), {
    WORKERS: String(spec.workers),
    NOFILE: String(Math.max(4096, connections + 100)),
    CONNECTIONS: String(connections),
    DIR: place.dir,
    PORT: String(place.port),
    LISTEN: spec.h2 ? " ssl http2" : spec.tls ? " ssl" : "",
    SSL: place.cert && (spec.tls || spec.h2)
      ? `    ssl_certificate ${place.cert.cert};\n    ssl_certificate_key ${place.cert.key};`
      : "",
    SERVERS: place.backendPorts.map((p) => `    server 127.0.0.1:${p};`).join("\n"),
    HTTP: spec.bare ? "" : SAME_JOB_HTTP,
    LOCATIONS: paths.map((p) => `    location ${p} { ${PROXY}${spec.bare ? "" : SAME_JOB} }`)
      .join("\n"),
  });
}

/** haproxy.cfg with `threads` threads at `place`, from `bench/haproxy.cfg.template`. */
export async function haproxyConfig(threads: number, place: PeerPlace): Promise<string> {
  return fill(await Deno.readTextFile(`${ROOT}/bench/haproxy.cfg.template`), {
    THREADS: String(threads),
    PORT: String(place.port),
    SERVERS: place.backendPorts.map((p, i) => `  server b${i + 1} 127.0.0.1:${p}`).join("\n"),
  });
}
