// Follow a run with the `eventsource` package (WHATWG EventSource for Node), as a browser
// would: listen for each event type, let it reconnect as it wants, stop when it gives up.
// Prints one JSON line: every request it made (with its Last-Event-ID and the answer's
// status), every event it received, and its final readyState.
import { EventSource } from "eventsource";

const [url, timeoutMs = "20000"] = process.argv.slice(2);
const requests = [];
const events = [];

const source = new EventSource(url, {
  fetch: async (input, init) => {
    const headers = new Headers(init?.headers);
    const request = { lastEventId: headers.get("last-event-id"), status: null };
    requests.push(request);
    const response = await fetch(input, init);
    request.status = response.status;
    return response;
  },
});

for (const type of ["start", "thinking", "delta", "tool_call", "tool_result", "error", "done"]) {
  source.addEventListener(type, (event) => {
    if (event.data) events.push({ type, id: event.lastEventId, data: JSON.parse(event.data) });
  });
}

function finish() {
  process.stdout.write(JSON.stringify({ requests, events, readyState: source.readyState }) + "\n");
  source.close();
  process.exit(0);
}

source.onerror = () => {
  // A closed source will never reconnect (WHATWG: "fail the connection").
  if (source.readyState === source.CLOSED) finish();
};
setTimeout(finish, Number(timeoutMs));
