// Call chatstream's /v1 facade with the official `openai` npm package and
// report what it made of the answer (or which typed error it raised).
//
// One JSON argument: {baseURL, apiKey, request, headers?}; `request` is the
// body of chat.completions.create (with `stream: true` for a stream).
// Prints one JSON line: {"event": "result", text, chunks, completion, headers, error}.
import OpenAI from "openai";

const options = JSON.parse(process.argv[2]);
const client = new OpenAI({
  baseURL: options.baseURL,
  apiKey: options.apiKey,
  maxRetries: 0,
  defaultHeaders: options.headers,
});

const result = { event: "result", text: null, chunks: [], completion: null, headers: null, error: null };
const chatstreamHeaders = (response) => ({
  session: response.headers.get("x-chatstream-session-id"),
  message: response.headers.get("x-chatstream-message-id"),
});
try {
  const { data, response } = await client.chat.completions.create(options.request).withResponse();
  result.headers = chatstreamHeaders(response);
  if (options.request.stream) {
    let text = "";
    for await (const chunk of data) {
      result.chunks.push(chunk);
      text += chunk.choices[0]?.delta?.content ?? "";
    }
    result.text = text;
  } else {
    result.completion = data;
    result.text = data.choices[0].message.content;
  }
} catch (error) {
  result.error = {
    name: error.constructor.name,
    status: error.status ?? null,
    typed: {
      BadRequestError: error instanceof OpenAI.BadRequestError,
      AuthenticationError: error instanceof OpenAI.AuthenticationError,
      RateLimitError: error instanceof OpenAI.RateLimitError,
      APIError: error instanceof OpenAI.APIError,
    },
    message: error.message,
    code: error.code ?? null,
    param: error.param ?? null,
    retryAfter: error.headers?.get?.("retry-after") ?? null,
  };
}
process.stdout.write(JSON.stringify(result) + "\n");
