// The AI SDK (package ai) with its OpenAI and Anthropic providers pointed at the proxy:
// openai.chat(id) speaks Chat Completions, openai(id) the Responses API, anthropic(id)
// Messages. `input.provider` picks one of the three.
import { createAnthropic } from '@ai-sdk/anthropic';
import { createOpenAI } from '@ai-sdk/openai';
import {
  embedMany, generateObject, generateText, stepCountIs, streamText, tool,
} from 'ai';
import { z } from 'zod';

function languageModel({ provider, baseURL, apiKey, model }) {
  if (provider === 'anthropic') return createAnthropic({ baseURL, apiKey })(model);
  const openai = createOpenAI({ baseURL, apiKey });
  return provider === 'chat' ? openai.chat(model) : openai(model);
}

function settings(input) {
  return {
    model: languageModel(input),
    ...(input.maxRetries === undefined ? {} : { maxRetries: input.maxRetries }),
    // store: false makes the Responses provider send earlier output items whole, not as
    // item_reference.
    ...(input.store === undefined ? {} : { providerOptions: { openai: { store: input.store } } }),
  };
}

export async function text(input) {
  const result = await generateText({ ...settings(input), prompt: 'Say hello' });
  return {
    text: result.text,
    finishReason: result.finishReason,
    usage: { inputTokens: result.usage.inputTokens, outputTokens: result.usage.outputTokens },
    responseId: result.response.id,
    responseModel: result.response.modelId,
    generationHeader: result.response.headers?.['x-anyrouter-generation-id'],
  };
}

export async function stream(input) {
  const result = streamText({ ...settings(input), prompt: 'Say hello' });
  const deltas = [];
  for await (const delta of result.textStream) deltas.push(delta);
  const usage = await result.usage;
  return {
    deltas,
    text: await result.text,
    finishReason: await result.finishReason,
    usage: { inputTokens: usage.inputTokens, outputTokens: usage.outputTokens },
  };
}

export async function object(input) {
  const result = await generateObject({
    ...settings(input),
    schema: z.object({ city: z.string(), temperature: z.number(), sunny: z.boolean() }),
    prompt: 'The weather in Paris as JSON',
  });
  return { object: result.object, finishReason: result.finishReason };
}

// A tool the model calls, run by the SDK, its result sent back, then the final answer.
export async function toolLoop(input) {
  const calls = [];
  const result = await generateText({
    ...settings(input),
    prompt: 'What is the weather in Paris?',
    tools: {
      get_weather: tool({
        description: 'Weather for a city',
        inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => {
          calls.push(city);
          return `Sunny in ${city}, 21C`;
        },
      }),
    },
    stopWhen: stepCountIs(3),
  });
  return {
    calls,
    steps: result.steps.length,
    finishReasons: result.steps.map((step) => step.finishReason),
    text: result.text,
  };
}

export async function embeddings(input) {
  const openai = createOpenAI({ baseURL: input.baseURL, apiKey: input.apiKey });
  const result = await embedMany({ model: openai.embedding(input.model), values: ['a', 'b'] });
  return { embeddings: result.embeddings, tokens: result.usage.tokens };
}
