// Long queries as jobs: submit now and collect later, follow their progress, cancel before data
// access (the Python client's lomas.client.jobs).
//
//   const job = await client.smartnoiseSql.submit("SELECT COUNT(*) AS n FROM df", "1", "1e-5");
//   for await (const event of job.watch()) console.log(describeStatus(event)); // "queued (2 ahead)"
//   const release = await job.result({ timeoutMs: 60_000 });
//   await job.cancel(); // before a worker touched the data: the reservation comes back in full

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { PrivacyLossValues, Release } from "./client.js";
import { QueryTimeout } from "./errors.js";
import {
  QueryState,
  type ExecuteQueryResponse,
  type WatchQueryResponse,
} from "./gen/lomas/gateway/v1/gateway_pb.js";

/** "queued" (its cost reserved, its task waiting for a worker), "running" (a worker touched the
 * data: it can no longer be cancelled) or "done" (released). */
export type QueryStateName = "queued" | "running" | "done" | "unknown";

/** Where a query stands, with the Python client's keys. */
export interface QueryStatus {
  state: QueryStateName;
  /** While queued: 1 when the task is next for a worker; 0 when not known. */
  queue_position: number;
}

/** One step of a watched query, as the gateway reported it. */
export interface QueryEvent extends QueryStatus {
  query_id: string;
  /** When done: the release, as `query` returns it; null before. */
  release: Release | null;
  /** When the gateway saw the query in this state. */
  event_time: Date | null;
}

const STATES: Record<QueryState, QueryStateName> = {
  [QueryState.UNSPECIFIED]: "unknown",
  [QueryState.QUEUED]: "queued",
  [QueryState.RUNNING]: "running",
  [QueryState.DONE]: "done",
};

/** A status as the Python client's progress bar writes it: "queued (2 ahead)", "running"... */
export function describeStatus(status: QueryStatus): string {
  if (status.state === "queued" && status.queue_position > 0) {
    return `queued (${status.queue_position - 1} ahead)`;
  }
  return status.state;
}

/** A WatchQuery event with its state named and its release (if any) decoded. */
export function queryEvent(
  message: WatchQueryResponse,
  release: (response: ExecuteQueryResponse) => Release,
): QueryEvent {
  const result = message.state === QueryState.DONE ? message.result : undefined;
  return {
    query_id: message.queryId,
    state: STATES[message.state] ?? "unknown",
    queue_position: message.queuePosition,
    release: result === undefined ? null : release(result),
    event_time: message.eventTime === undefined ? null : timestampDate(message.eventTime),
  };
}

export interface WatchOptions {
  /** How long to follow the query, in milliseconds (default: the client's call deadline). When it
   * passes, the watch throws QueryTimeout and the query goes on: ask again later. */
  timeoutMs?: number;
}

/** What a job needs from its client: the gateway's events for the query (their errors already
 * typed; leaving the loop early closes the call), its cancellation, and how a release is decoded. */
export interface JobCalls {
  watch(options: WatchOptions): AsyncIterable<WatchQueryResponse>;
  cancel(): Promise<PrivacyLossValues>;
  release(response: ExecuteQueryResponse): Release;
}

/** A submitted query of yours, by its query id (`client.job(queryId)` finds it again). */
export class QueryJob {
  constructor(
    readonly queryId: string,
    private readonly calls: JobCalls,
  ) {}

  /**
   * The query's steps as the gateway reports them, as an async iterator: an event now and at each
   * change (queued with its place, running), ending with "done" and the release. A failed or
   * cancelled query throws its typed error (QueryCancelled, ExecutionFailed...). Leaving the loop
   * early closes the stream.
   *
   *   for await (const event of job.watch()) console.log(event.state, event.queue_position);
   */
  async *watch(options: WatchOptions = {}): AsyncGenerator<QueryEvent, void, undefined> {
    for await (const message of this.calls.watch(options)) {
      yield queryEvent(message, this.calls.release);
    }
  }

  /** Where the query stands now; a failed or cancelled query throws its typed error. */
  async status(): Promise<QueryStatus> {
    for await (const event of this.watch()) {
      return { state: event.state, queue_position: event.queue_position };
    }
    throw new Error("the gateway ended the watch without an event");
  }

  /** Wait for the release (at most `timeoutMs`: then QueryTimeout, and the query goes on: ask
   * again) and return it as `query` does. */
  async result(options: WatchOptions = {}): Promise<Release> {
    for await (const event of this.watch(options)) {
      if (event.release !== null) {
        return event.release;
      }
    }
    throw new QueryTimeout("DEADLINE_EXCEEDED", "QUERY_TIMEOUT", "the watch ended early", {});
  }

  /** Cancel the query if no worker touched the data yet; returns the refunded cost. Too late
   * throws DataAccessed: the query runs to its end and its charge stands. */
  cancel(): Promise<PrivacyLossValues> {
    return this.calls.cancel();
  }
}
