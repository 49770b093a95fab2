// Drive chatstream's /api/ui/chat with the AI SDK's own client side, as a
// `useChat` frontend does: `DefaultChatTransport` sends the SDK's body and
// parses the stream with the SDK's chunk schema, `readUIMessageStream`
// assembles the message. Report what the SDK made of it.
//
// One JSON argument:
//   api                the transport's `api` (http://…/api/ui/chat)
//   headers            extra request headers (Authorization)
//   action             "send" (sendMessages) or "reconnect" (reconnectToStream)
//   chatId, trigger, messageId, messages, body   for "send", as useChat passes them
//   notifyAfterDeltas  print {"event": "deltas", messageId} once this many text deltas arrived
//   dropAfterDeltas    then abort the request: the connection drops mid-stream
// Prints JSON lines; the last is
//   {"event": "result", message, chunks, errors, dropped, noStream}
import { DefaultChatTransport, readUIMessageStream } from "ai";

const options = JSON.parse(process.argv[2]);
const emit = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const transport = new DefaultChatTransport({ api: options.api, headers: options.headers });
const abort = new AbortController();

let stream;
if (options.action === "reconnect") {
  stream = await transport.reconnectToStream({ chatId: options.chatId, abortSignal: abort.signal });
  if (stream === null) {
    // 204: the chat has no live run.
    emit({ event: "result", noStream: true });
    process.exit(0);
  }
} else {
  stream = await transport.sendMessages({
    chatId: options.chatId,
    trigger: options.trigger ?? "submit-message",
    messageId: options.messageId,
    messages: options.messages,
    body: options.body,
    abortSignal: abort.signal,
  });
}

const chunks = [];
let messageId = null;
let deltas = 0;
let dropped = false;
const recorded = stream.pipeThrough(
  new TransformStream({
    transform(chunk, controller) {
      chunks.push(chunk);
      controller.enqueue(chunk);
      if (chunk.type === "start") messageId = chunk.messageId;
      if (chunk.type !== "text-delta") return;
      deltas += 1;
      if (deltas === options.notifyAfterDeltas) emit({ event: "deltas", messageId });
      if (deltas === options.dropAfterDeltas) {
        dropped = true;
        abort.abort();
      }
    },
  }),
);

const errors = [];
let message = null;
for await (const snapshot of readUIMessageStream({
  stream: recorded,
  onError: (error) => errors.push(String(error?.message ?? error)),
})) {
  message = snapshot;
}
emit({ event: "result", message, chunks, errors, dropped, noStream: false });
