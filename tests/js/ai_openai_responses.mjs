// The AI SDK's default OpenAI model, `createOpenAI({baseURL})(modelId)`, which
// speaks the Responses API, pointed at chatstream's /v1: `streamText` with a
// tool the SDK runs itself (a loop of two steps), as an app would write it.
//
// One JSON argument: {baseURL, model, prompt, city}.
// Prints one JSON line: {"event": "result", text, steps, toolCalls, toolResults, error}.
import { createOpenAI } from "@ai-sdk/openai";
import { jsonSchema, stepCountIs, streamText, tool } from "ai";

const options = JSON.parse(process.argv[2]);
const openai = createOpenAI({ baseURL: options.baseURL, apiKey: "unused" });
const result = { event: "result", text: null, steps: 0, toolCalls: [], toolResults: [], error: null };
try {
  const answer = streamText({
    model: openai(options.model),
    prompt: options.prompt,
    tools: {
      get_weather: tool({
        description: "The weather in a city.",
        inputSchema: jsonSchema({
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
        }),
        execute: async ({ city }) => `sunny in ${city}`,
      }),
    },
    stopWhen: stepCountIs(3),
    maxRetries: 0,
    onError: ({ error }) => {
      result.error = String(error?.message ?? error);
    },
  });
  let text = "";
  for await (const delta of answer.textStream) text += delta;
  const steps = await answer.steps;
  result.text = text;
  result.steps = steps.length;
  result.toolCalls = steps.flatMap((step) => step.toolCalls.map((c) => ({ name: c.toolName, input: c.input })));
  result.toolResults = steps.flatMap((step) => step.toolResults.map((r) => r.output));
} catch (error) {
  result.error = String(error?.message ?? error);
}
process.stdout.write(JSON.stringify(result) + "\n");
