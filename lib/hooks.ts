/**
 * Request hooks written in TypeScript: a module the operator names with `hooks:`, whose
 * default export has `onRequest(req, ctx)` and/or `onResponse(res, ctx)`. Hooks run with the
 * balancer's own permissions, after routing and before a backend is chosen.
 */
import { pathToFileURL } from "node:url";
import type { ClientRequest } from "./message.ts";

/** A request as hooks see it; the setters change what is sent to the backend. */
export interface HookRequest {
  /** `GET`, `POST`, … */
  readonly method: string;
  /** The path, without the query (as the client sent it, after any earlier rewrite). */
  readonly path: string;
  /** The query string without its `?` (empty when there is none). */
  readonly query: string;
  /** Path and query as they will be sent upstream. */
  readonly target: string;
  /** The Host the client addressed, or undefined. */
  readonly host: string | undefined;
  /** The client's address (after `trustedProxies` and the PROXY protocol). */
  readonly ip: string;
  /** `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`. */
  readonly protocol: string;
  /** Whether the request arrived over TLS. */
  readonly tls: boolean;
  /** The request id (the client's X-Request-Id, or a generated one). */
  readonly requestId: string;
  /** A header's value (repeats joined with ", "), or undefined; any case. */
  header(name: string): string | undefined;
  /** Every header line as [name, value], names as sent. */
  headers(): [string, string][];
  /**
   * Replaces every line of header `name` with one carrying `value`. Throws for an invalid name
   * or value, and for Content-Length, Transfer-Encoding and Connection (the body's framing).
   */
  setHeader(name: string, value: string): void;
  /** Removes header `name` (not Content-Length, Transfer-Encoding or Connection: it throws). */
  removeHeader(name: string): void;
  /** Sends `path` upstream instead (the query is kept); it must start with `/`. */
  setPath(path: string): void;
  /** Sends `target` (path and query) upstream instead; it must start with `/`. */
  setTarget(target: string): void;
}

/** What `onRequest` may read and decide. */
export interface RequestContext {
  /** The pool the request goes to; set it to another pool's name to send it there. */
  pool: string | undefined;
  /** The matched route's name or index (empty without `routes`). */
  readonly route: string;
  readonly requestId: string;
  /** Anything `onRequest` wants `onResponse` to see. */
  readonly state: Record<string, unknown>;
}

/** A backend response as `onResponse` sees it. */
export interface HookResponse {
  readonly status: number;
  /**
   * The response's headers; changes are sent to the client, except to Content-Length,
   * Transfer-Encoding and Connection (the balancer frames the body).
   */
  readonly headers: Headers;
}

/** What `onResponse` may read. */
export interface ResponseContext {
  readonly pool: string;
  readonly route: string;
  readonly requestId: string;
  /** The backend that answered. */
  readonly backend: { readonly name: string; readonly url: string };
  readonly state: Record<string, unknown>;
}

/** The shape of a hooks module's default export. */
export interface Hooks {
  /**
   * Called for each request routed to a pool (or matching no route), before a backend is
   * chosen. Return a `Response` to answer the client without a backend.
   */
  onRequest?(
    req: HookRequest,
    ctx: RequestContext,
  ): void | Response | undefined | Promise<void | Response | undefined>;
  /** Called when a backend's response head arrives, before it is sent to the client. */
  onResponse?(res: HookResponse, ctx: ResponseContext): void | Promise<void>;
}

/** Imports in this isolate so far: each import gets a URL of its own (see loadHooks). */
let imports = 0;

/** Loads the hooks module at `path` (absolute); `version` makes a reload import it afresh. */
export async function loadHooks(path: string, version: number): Promise<Hooks> {
  let module: { default?: unknown };
  // A module map remembers a failed import by URL and fails every later import of that URL
  // the same way: a retry after a fix must not reuse the URL of a failed attempt, whatever
  // `version` the caller passes.
  const url = `${pathToFileURL(path).href}?v=${version}.${++imports}`;
  try {
    module = await import(url);
  } catch (err) {
    // The versioned URL is ours, not the operator's: show the file's own.
    const message = ((err as Error).message?.split("\n")[0] ?? String(err))
      .replaceAll(url, pathToFileURL(path).href);
    throw new Error(`hooks: cannot load ${path}: ${message}`);
  }
  const hooks = module.default as Record<string, unknown> | undefined;
  if (
    !hooks || typeof hooks !== "object" ||
    (hooks.onRequest !== undefined && typeof hooks.onRequest !== "function") ||
    (hooks.onResponse !== undefined && typeof hooks.onResponse !== "function") ||
    (hooks.onRequest === undefined && hooks.onResponse === undefined)
  ) {
    throw new Error(
      `hooks: ${path} must default-export an object with onRequest and/or onResponse functions`,
    );
  }
  return hooks as Hooks;
}

/** The request as hooks see it, recording their changes. */
export class HookedRequest implements HookRequest {
  #names: string[] | undefined;
  #keys: string[] | undefined;
  #values: string[] | undefined;
  #target: string;
  /** Whether a hook changed headers or the target. */
  changed = false;

  constructor(
    readonly request: ClientRequest,
    target: string,
    readonly ip: string,
    readonly requestId: string,
  ) {
    this.#target = target;
  }

  get method(): string {
    return this.request.method;
  }
  get target(): string {
    return this.#target;
  }
  get path(): string {
    const q = this.#target.indexOf("?");
    return q === -1 ? this.#target : this.#target.slice(0, q);
  }
  get query(): string {
    const q = this.#target.indexOf("?");
    return q === -1 ? "" : this.#target.slice(q + 1);
  }
  get host(): string | undefined {
    return this.request.host;
  }
  get protocol(): string {
    return this.request.protocol ?? (this.request.minor === 0 ? "HTTP/1.0" : "HTTP/1.1");
  }
  get tls(): boolean {
    return this.request.tls ?? false;
  }

  header(name: string): string | undefined {
    if (!this.#keys) return this.request.header(name.toLowerCase());
    return headerOf(this.#keys, this.#values!, name.toLowerCase());
  }

  headers(): [string, string][] {
    const names = this.#names ?? this.request.names;
    const values = this.#values ?? this.request.values;
    return names.map((n, i) => [n, values[i]]);
  }

  setHeader(name: string, value: string): void {
    checkHeader(name, value);
    this.removeHeader(name);
    this.#names!.push(name);
    this.#keys!.push(name.toLowerCase());
    this.#values!.push(value);
  }

  removeHeader(name: string): void {
    checkFraming(name);
    this.#copy();
    const key = name.toLowerCase();
    for (let i = this.#keys!.length - 1; i >= 0; i--) {
      if (this.#keys![i] !== key) continue;
      this.#names!.splice(i, 1);
      this.#keys!.splice(i, 1);
      this.#values!.splice(i, 1);
    }
  }

  setPath(path: string): void {
    const q = this.#target.indexOf("?");
    this.setTarget(q === -1 ? path : path + this.#target.slice(q));
  }

  setTarget(target: string): void {
    if (!/^\/[\x21-\x7e]*$/.test(target)) {
      throw new TypeError(`a target must start with / and be printable ASCII: ${target}`);
    }
    this.#target = target;
    this.changed = true;
  }

  /** The request to forward: the original, or a view with the hooks' changes. */
  result(): ClientRequest {
    if (!this.changed) return this.request;
    return derivedRequest(this.request, {
      target: this.#target,
      names: this.#names,
      keys: this.#keys,
      values: this.#values,
    });
  }

  #copy(): void {
    this.changed = true;
    if (this.#keys) return;
    this.#names = [...this.request.names];
    this.#keys = [...this.request.keys];
    this.#values = [...this.request.values];
  }
}

function checkHeader(name: string, value: string): void {
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(name)) {
    throw new TypeError(`invalid header name: ${JSON.stringify(name)}`);
  }
  if (/[\0\r\n]/.test(value)) throw new TypeError(`invalid header value for ${name}`);
  checkFraming(name);
}

/**
 * Header names that neither hooks nor a route's header edits change: the message's framing is
 * the balancer's. Dropping a request's Content-Length would send its body upstream as the start
 * of another request (smuggled past every route); setting one on a response would send two.
 */
export const FRAMING: ReadonlySet<string> = new Set([
  "content-length",
  "transfer-encoding",
  "connection",
]);

/** Throws for the framing headers ({@linkcode FRAMING}): they are not a hook's to change. */
function checkFraming(name: string): void {
  if (FRAMING.has(name.toLowerCase())) {
    throw new TypeError(`${name} frames the request body; hooks cannot change it`);
  }
}

/** A header's value over parallel key/value arrays (repeats joined as ClientRequest does). */
export function headerOf(
  keys: readonly string[],
  values: readonly string[],
  key: string,
): string | undefined {
  let found: string | undefined;
  for (let i = 0; i < keys.length; i++) {
    if (keys[i] !== key) continue;
    found = found === undefined ? values[i] : found + (key === "cookie" ? "; " : ", ") + values[i];
  }
  return found;
}

/** A view of `req` with some of its fields replaced (rewritten target or headers). */
export function derivedRequest(
  req: ClientRequest,
  change: {
    target?: string;
    names?: readonly string[];
    keys?: readonly string[];
    values?: readonly string[];
  },
): ClientRequest {
  const view = Object.create(req) as ClientRequest & Record<string, unknown>;
  const keys = change.keys ?? req.keys;
  const values = change.values ?? req.values;
  Object.defineProperties(view, {
    target: { value: change.target ?? req.target },
    names: { value: change.names ?? req.names },
    keys: { value: keys },
    values: { value: values },
    header: { value: (key: string) => headerOf(keys, values, key) },
    body: {
      get: () => req.body,
      set: (v) => (req.body = v),
    },
  });
  return view;
}

/** A Fetch `Response` from a hook turned into the parts of a reply. */
export function fromResponse(response: Response): {
  status: number;
  headers: [string, string][];
  body: ReadableStream<Uint8Array> | null;
} {
  const headers: [string, string][] = [];
  response.headers.forEach((value, name) => {
    if (name === "set-cookie") return;
    if (name !== "content-length" && name !== "transfer-encoding" && name !== "connection") {
      headers.push([name, value]);
    }
  });
  for (const cookie of response.headers.getSetCookie()) headers.push(["set-cookie", cookie]);
  return { status: response.status, headers, body: response.body };
}
