// @anthropic-ai/sdk (Anthropic's Node SDK) with baseURL the proxy's /api: it appends
// /v1/messages itself, and sends the key as x-api-key.
import Anthropic from '@anthropic-ai/sdk';

const WEATHER_TOOL = {
  name: 'get_weather',
  description: 'Weather for a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};

// With `authToken` the key goes as a Bearer token (ANTHROPIC_AUTH_TOKEN) instead.
function client({ baseURL, apiKey, authToken, maxRetries }) {
  return new Anthropic({
    baseURL,
    ...(authToken === undefined ? { apiKey } : { apiKey: null, authToken }),
    ...(maxRetries === undefined ? {} : { maxRetries }),
  });
}

export async function create(input) {
  const { data, response } = await client(input).messages.create({
    model: input.model,
    max_tokens: 100,
    system: 'Be concise',
    messages: [{ role: 'user', content: 'Hello' }],
  }).withResponse();
  return {
    id: data.id,
    model: data.model,
    content: data.content,
    stopReason: data.stop_reason,
    usage: data.usage,
    generationHeader: response.headers.get('x-anyrouter-generation-id'),
  };
}

// The SDK's messages.stream() with a tool: text events, the assembled tool_use input, then the
// tool result sent back and answered.
export async function stream(input) {
  const sdk = client(input);
  const messages = [{ role: 'user', content: 'Weather in Paris?' }];
  const stream = sdk.messages.stream({
    model: input.model, max_tokens: 100, tools: [WEATHER_TOOL], messages,
  });
  const types = [];
  let text = '';
  stream.on('streamEvent', (event) => types.push(event.type));
  stream.on('text', (delta) => { text += delta; });
  const final = await stream.finalMessage();
  const call = final.content.find((block) => block.type === 'tool_use');
  messages.push({ role: 'assistant', content: final.content },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id,
      content: 'Sunny, 21C' }] });
  const answer = await sdk.messages.stream({
    model: input.model, max_tokens: 100, tools: [WEATHER_TOOL], messages,
  }).finalText();
  return {
    types,
    text,
    model: final.model,
    stopReason: final.stop_reason,
    call: { name: call.name, input: call.input },
    usage: final.usage,
    answer,
  };
}

export async function countTokens(input) {
  const counted = await client(input).messages.countTokens({
    model: input.model,
    messages: [{ role: 'user', content: 'Hello there' }],
  });
  return counted;
}

export async function createOnce(input) {
  const message = await client(input).messages.create({
    model: input.model, max_tokens: 50, messages: [{ role: 'user', content: 'hi' }],
  });
  return { content: message.content };
}
