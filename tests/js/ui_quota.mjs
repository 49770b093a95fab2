// Send one message to chatstream's /api/ui/chat with the AI SDK's own
// `DefaultChatTransport`, through a `fetch` that notes the answer's status
// and X-Quota-* headers (what a `useChat` app's fetch sees), and report
// whether the SDK took the stream or threw (a refused chat).
//
// One JSON argument: api, chatId, text.
// Prints one line: {"event": "result", status, quota, text, error}
import { DefaultChatTransport, readUIMessageStream } from "ai";

const options = JSON.parse(process.argv[2]);
let seen = null;
const transport = new DefaultChatTransport({
  api: options.api,
  fetch: async (input, init) => {
    const response = await fetch(input, init);
    seen = {
      status: response.status,
      quota: {
        limit: response.headers.get("x-quota-limit"),
        remaining: response.headers.get("x-quota-remaining"),
        reset: response.headers.get("x-quota-reset"),
        retryAfter: response.headers.get("retry-after"),
      },
    };
    return response;
  },
});

let text = null;
let error = null;
try {
  const stream = await transport.sendMessages({
    chatId: options.chatId,
    trigger: "submit-message",
    messageId: undefined,
    messages: [{ id: "u1", role: "user", parts: [{ type: "text", text: options.text }] }],
    abortSignal: new AbortController().signal,
  });
  let message = null;
  for await (const snapshot of readUIMessageStream({ stream })) message = snapshot;
  text = message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
} catch (caught) {
  error = String(caught?.message ?? caught);
}
process.stdout.write(JSON.stringify({ event: "result", ...seen, text, error }) + "\n");
