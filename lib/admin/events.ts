/** `GET /api/events`: a server-sent event stream feeding the dashboard once a second. */
import type { Balancer } from "../balancer.ts";
import { type StatusView, statusView } from "./api.ts";
import { type Columns, type Summary, type TimeSeries, WINDOW_SECONDS } from "./timeseries.ts";

/** Seconds the headline numbers (rps, error rate, p50, p99) are computed over. */
export const SUMMARY_SECONDS = 5;

/** One event's data: the status plus per-second history since the previous event. */
export interface Frame {
  /** Server time (ms since the epoch). */
  time: number;
  /** Whether the API accepts writes (a token is configured). */
  writable: boolean;
  status: StatusView;
  /** Over the last {@linkcode SUMMARY_SECONDS} complete seconds. */
  summary: { total: Summary; backends: Record<string, Summary> };
  /** Complete seconds not sent before: 5 minutes in the first event, then usually one. */
  series: { total: Columns; backends: Record<string, Columns> };
}

/** Builds the frame covering seconds [from, to]. */
export function frame(
  balancer: Balancer,
  ts: TimeSeries,
  writable: boolean,
  from: number,
  to: number,
): Frame {
  const status = statusView(balancer);
  const key = (b: { pool: string; id: string }) => `${b.pool}/${b.id}`;
  ts.prune(new Set(status.backends.map(key)));
  const summaryFrom = to - SUMMARY_SECONDS + 1;
  const summary: Frame["summary"] = { total: ts.total.summary(summaryFrom, to), backends: {} };
  const series: Frame["series"] = { total: ts.total.columns(from, to), backends: {} };
  for (const b of status.backends) {
    const s = ts.series(key(b));
    summary.backends[key(b)] = s.summary(summaryFrom, to);
    series.backends[key(b)] = s.columns(from, to);
  }
  return { time: Date.now(), writable, status, summary, series };
}

/** Open streams, so shutdown can end them (the server waits for open responses). */
export class EventStreams {
  readonly #closers = new Set<() => void>();

  constructor(
    readonly balancer: Balancer,
    readonly ts: TimeSeries,
    readonly writable: boolean,
  ) {}

  /** Opens a stream: a `snapshot` event with five minutes of history, then an `update` per second. */
  open(): Response {
    const encoder = new TextEncoder();
    let timer: ReturnType<typeof setTimeout> | undefined;
    /** The last second sent (none yet: the snapshot sends the whole window). */
    let last = -Infinity;
    let close = () => {};
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        const send = async (event: string) => {
          // Worker threads' counts (the backends' response totals) first.
          await this.balancer.collect();
          // Taken after collecting: a second may have ended meanwhile (workers answer by message),
          // and no frame covers more than the window.
          const to = this.ts.lastSecond();
          const from = Math.max(last + 1, to - WINDOW_SECONDS + 1);
          const data = frame(this.balancer, this.ts, this.writable, from, to);
          last = to;
          controller.enqueue(encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
        };
        // Tick just after each second completes, so every update carries a whole new second.
        const schedule = () => {
          timer = setTimeout(tick, 1000 - (Date.now() % 1000) + 20);
        };
        const tick = async () => {
          try {
            await send("update");
            schedule();
          } catch {
            close();
          }
        };
        close = () => {
          clearTimeout(timer);
          if (this.#closers.delete(close)) {
            try {
              controller.close();
            } catch { /* already closed or errored by the client going away */ }
          }
        };
        this.#closers.add(close);
        controller.enqueue(encoder.encode("retry: 2000\n\n"));
        send("snapshot").then(schedule, close);
      },
      cancel: () => {
        clearTimeout(timer);
        this.#closers.delete(close);
      },
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        "x-accel-buffering": "no",
      },
    });
  }

  /** Ends every open stream. */
  closeAll(): void {
    for (const close of [...this.#closers]) close();
  }
}
