// The openai package (OpenAI's Node SDK) as its README sets it up, with baseURL the proxy's.
import OpenAI from 'openai';
import { zodResponseFormat, zodTextFormat } from 'openai/helpers/zod';
import { z } from 'zod';

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

function client({ baseURL, apiKey, maxRetries }) {
  return new OpenAI({ baseURL, apiKey, ...(maxRetries === undefined ? {} : { maxRetries }) });
}

export async function chat(input) {
  const { data, response } = await client(input).chat.completions.create({
    model: input.model,
    messages: [{ role: 'user', content: 'Say hello' }],
  }).withResponse();
  return {
    id: data.id,
    model: data.model,
    content: data.choices[0].message.content,
    usage: data.usage,
    generationHeader: response.headers.get('x-anyrouter-generation-id'),
  };
}

export async function chatStream(input) {
  const stream = await client(input).chat.completions.create({
    model: input.model,
    messages: [{ role: 'user', content: 'hi' }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const withChoices = chunks.filter((c) => c.choices.length > 0);
  return {
    text: withChoices.map((c) => c.choices[0].delta.content ?? '').join(''),
    ids: [...new Set(chunks.map((c) => c.id))],
    models: [...new Set(chunks.map((c) => c.model))],
    finishReason: withChoices.at(-1).choices[0].finish_reason,
    usage: chunks.at(-1).usage,
  };
}

// The model calls the tool, the caller runs it and sends the result back, the model answers:
// once as whole answers, once streamed (the SDK's chat.completions.stream() assembles the call).
export async function toolRoundTrip(input) {
  const sdk = client(input);
  const messages = [{ role: 'user', content: 'Weather in Paris?' }];
  const first = await sdk.chat.completions.create({
    model: input.model, messages, tools: [WEATHER_TOOL],
  });
  const call = first.choices[0].message.tool_calls[0];
  const streamed = await sdk.chat.completions.stream({
    model: input.model, messages, tools: [WEATHER_TOOL],
  }).finalChatCompletion();
  const streamedCall = streamed.choices[0].message.tool_calls[0];
  const args = JSON.parse(call.function.arguments);
  messages.push(first.choices[0].message,
    { role: 'tool', tool_call_id: call.id, content: `Sunny in ${args.city}, 21C` });
  const second = await sdk.chat.completions.create({
    model: input.model, messages, tools: [WEATHER_TOOL],
  });
  return {
    finishReason: first.choices[0].finish_reason,
    call: { name: call.function.name, arguments: args },
    streamedCall: { id: streamedCall.id, name: streamedCall.function.name,
      arguments: JSON.parse(streamedCall.function.arguments) },
    answer: second.choices[0].message.content,
  };
}

export async function embeddings(input) {
  const sdk = client(input);
  const asked = { model: input.model, input: ['a', 'b'] };
  const byDefault = await sdk.embeddings.create(asked); // sent as base64, decoded by the SDK
  const floats = await sdk.embeddings.create({ ...asked, encoding_format: 'float' });
  return {
    model: byDefault.model,
    usage: byDefault.usage,
    vectors: byDefault.data.map((d) => d.embedding),
    areArrays: byDefault.data.every((d) => Array.isArray(d.embedding)),
    floatVectors: floats.data.map((d) => d.embedding),
  };
}

export async function responses(input) {
  const response = await client(input).responses.create({
    model: input.model, input: 'Say hello', instructions: 'Be concise',
  });
  return {
    id: response.id,
    model: response.model,
    status: response.status,
    outputText: response.output_text,
    usage: response.usage,
  };
}

export async function responsesStream(input) {
  const stream = await client(input).responses.create({
    model: input.model, input: 'Say hello', stream: true,
  });
  const types = [];
  let text = '';
  let completed;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') completed = event.response;
  }
  return {
    types,
    text,
    id: completed.id,
    model: completed.model,
    outputText: completed.output_text ?? completed.output
      .flatMap((item) => item.content ?? []).map((part) => part.text ?? '').join(''),
    usage: completed.usage,
  };
}

// A function call through the Responses API, its output sent back with previous_response_id.
export async function responsesToolRoundTrip(input) {
  const sdk = client(input);
  const tools = [{ type: 'function', name: 'get_weather', description: 'Weather for a city',
    parameters: WEATHER_TOOL.function.parameters, strict: false }];
  const first = await sdk.responses.create({ model: input.model, input: 'Weather in Paris?',
    tools });
  const call = first.output.find((item) => item.type === 'function_call');
  const second = await sdk.responses.create({
    model: input.model, previous_response_id: first.id, tools,
    input: [{ type: 'function_call_output', call_id: call.call_id, output: 'Sunny, 21C' }],
  });
  return {
    call: { name: call.name, arguments: JSON.parse(call.arguments) },
    answer: second.output_text,
    ids: [first.id, second.id],
  };
}

// One plain chat request; the case's error, if any, is what the test looks at.
export async function chatOnce(input) {
  const completion = await client(input).chat.completions.create({
    model: input.model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 50,
  });
  return { content: completion.choices[0].message.content };
}

// The model list, and one model whose id holds a slash (the SDK percent-encodes it).
export async function models(input) {
  const sdk = client(input);
  const ids = [];
  for await (const model of sdk.models.list()) ids.push(model.id);
  const model = await sdk.models.retrieve(input.model);
  return { ids, retrieved: model.id, pricing: model.pricing };
}

const WEATHER = z.object({ city: z.string(), temperature: z.number(), sunny: z.boolean() });

// Structured output with a zod schema, as the SDK's README shows it: chat.completions.parse
// and responses.parse fill `parsed` / `output_parsed`.
export async function parse(input) {
  const sdk = client(input);
  const messages = [{ role: 'user', content: 'The weather in Paris' }];
  const chat = await sdk.chat.completions.parse({
    model: input.model, messages, response_format: zodResponseFormat(WEATHER, 'weather'),
  });
  const response = await sdk.responses.parse({
    model: input.model, input: messages, text: { format: zodTextFormat(WEATHER, 'weather') },
  });
  return { chat: chat.choices[0].message.parsed, responses: response.output_parsed };
}
