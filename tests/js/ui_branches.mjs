// Drive chatstream's /api/ui/chat with the AI SDK's own chat: `AbstractChat` (what
// useChat wraps) over `DefaultChatTransport`, its `sendMessage` (with and without a
// `messageId`: an edit) and `regenerate` (with and without one). The SDK rewrites its
// own list of messages and sends it; report each list it ends up with.
//
// One JSON argument:
//   api      the transport's `api` (http://…/api/ui/chat)
//   chatId   the chat's id
//   steps    each one of
//              {"send": text}                        sendMessage({text})
//              {"edit": text, "at": i}               sendMessage({text, messageId}) of
//                                                    the i-th message of the list
//              {"regenerate": true, "at": i?}        regenerate({messageId}) of the i-th
//                                                    message, or regenerate()
// Prints a JSON line per step {"event": "step", messages, error}, then
//   {"event": "result", messages}
// where messages are [{id, role, text}] as the chat holds them.
import { AbstractChat, DefaultChatTransport } from "ai";

const options = JSON.parse(process.argv[2]);
const emit = (line) => process.stdout.write(JSON.stringify(line) + "\n");

// The state a framework keeps (React's, Vue's …), as plain arrays.
class PlainState {
  constructor() {
    this.messages = [];
    this.status = "ready";
    this.error = undefined;
  }
  pushMessage(message) {
    this.messages = this.messages.concat(message);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(thing) {
    return structuredClone(thing);
  }
}

class Chat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new PlainState() });
  }
}

const chat = new Chat({
  id: options.chatId,
  transport: new DefaultChatTransport({ api: options.api }),
});

const listed = () =>
  chat.messages.map((message) => ({
    id: message.id,
    role: message.role,
    text: message.parts
      .filter((part) => part.type === "text")
      .map((part) => part.text)
      .join(""),
  }));

for (const step of options.steps) {
  if (step.send !== undefined) {
    await chat.sendMessage({ text: step.send });
  } else if (step.edit !== undefined) {
    await chat.sendMessage({ text: step.edit, messageId: chat.messages[step.at].id });
  } else if (step.regenerate) {
    await chat.regenerate(step.at === undefined ? {} : { messageId: chat.messages[step.at].id });
  }
  emit({ event: "step", messages: listed(), error: chat.error ? String(chat.error.message) : null });
}
emit({ event: "result", messages: listed() });
