// Server-sent events read with fetch(): EventSource cannot send an Authorization header. The stream is
// parsed here (id / event / data fields, comment lines skipped) and resumed with Last-Event-ID after a drop.

import { ApiError, authHeaders, check } from "./api.js";

const RETRY_MS = 1000;

/** One SSE message block -> {id, event, data} (data parsed as JSON), or null for comments only. */
export function parseBlock(block) {
  let id = null;
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") id = value;
    else if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { id: id === null ? null : Number(id), event, data: JSON.parse(data.join("\n")) };
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

/**
 * Follow `path` (an SSE endpoint of the API) until the stream is complete or `signal` aborts.
 *
 * Each message goes to `onMessage({id, event, data})`. A dropped connection (network error, 5xx), or a
 * stream that ends while `isDone()` is still false (a proxy or a restarted API closed it early), is
 * resumed after a second with `Last-Event-ID` set to the last id seen, so no event is lost or repeated;
 * a 4xx is final and rejects with ApiError. `onStatus` hears "live", "reconnecting" and "ended".
 * Resolves with the last event id.
 */
export async function follow(
  path,
  { onMessage, onStatus = () => {}, isDone = () => true, signal, lastEventId = null } = {},
) {
  while (!signal?.aborted) {
    try {
      const headers = authHeaders(undefined, { Accept: "text/event-stream" });
      if (lastEventId !== null) headers["Last-Event-ID"] = String(lastEventId);
      const response = await fetch(path, { headers, signal, cache: "no-store" });
      await check(response);
      onStatus("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r/g, "");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const message = parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (message === null) continue;
          if (message.id !== null) lastEventId = message.id;
          onMessage(message);
        }
      }
      if (isDone()) {
        onStatus("ended"); // the API ends a job's stream once the job is over
        return lastEventId;
      }
      onStatus("reconnecting"); // ended early: resume after the last event seen
      await sleep(RETRY_MS, signal);
    } catch (error) {
      if (signal?.aborted) break;
      if (error instanceof ApiError && error.status < 500) throw error;
      onStatus("reconnecting");
      await sleep(RETRY_MS, signal);
    }
  }
  return lastEventId;
}
