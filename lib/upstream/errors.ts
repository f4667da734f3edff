/** How an upstream exchange can fail, and what follows from it: the client's status, a retry, blame. */

/** Why an upstream exchange failed. */
export type UpstreamFailure =
  | "connect" // could not open a connection (refused, unreachable, connect timeout)
  | "reset" // the connection broke after it was opened
  | "timeout" // no response head within timeouts.response
  | "protocol" // the backend sent something that is not valid HTTP/1.1
  | "client"; // the client's request body failed (malformed, cut off, too large): nobody upstream is to blame

/**
 * An upstream failure with its kind, whether request bytes reached the wire, and whether the
 * request may be tried again on another backend, decided where the failure was seen.
 */
export class UpstreamError extends Error {
  constructor(
    readonly kind: UpstreamFailure,
    message: string,
    /** True once any byte of the request was written to the backend. */
    readonly sent: boolean,
    /** Another attempt may be made (nothing was sent, or the request can safely be resent). */
    readonly retryable: boolean = !sent,
    /** For `client` failures: the status the client gets (400, or 413 for a body too large). */
    readonly clientStatus = 400,
  ) {
    super(message);
    this.name = "UpstreamError";
  }

  /** Whether the failure counts against the backend (outlier detection, its failure counts). */
  get blamesBackend(): boolean {
    return this.kind !== "client" && this.kind !== "protocol";
  }

  /** The status the client gets when this failure ends the request. */
  get status(): number {
    return this.kind === "client" ? this.clientStatus : this.kind === "timeout" ? 504 : 502;
  }
}
