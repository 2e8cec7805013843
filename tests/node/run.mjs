// Runs cases of cases/<module>.mjs against the proxy, one after the other, and prints as
// the last line of stdout a JSON list with, per case, {"result": ...} or {"error": ...}
// (the thrown error as the SDK typed it).
//   node run.mjs '[{"module": "openai", "case": "chat", "input": {...}}, ...]'
// tests/node_clients.py starts it with an environment holding no provider or SDK settings.

import { describeError } from './lib.mjs';

globalThis.AI_SDK_LOG_WARNINGS = false; // the AI SDK's console warnings are not results

const outcomes = [];
for (const call of JSON.parse(process.argv[2])) {
  const cases = await import(`./cases/${call.module}.mjs`);
  if (typeof cases[call.case] !== 'function') {
    throw new Error(`no case ${call.case} in cases/${call.module}.mjs`);
  }
  try {
    outcomes.push({ result: await cases[call.case](call.input) });
  } catch (err) {
    outcomes.push({ error: describeError(err) });
  }
}
process.stdout.write(`${JSON.stringify(outcomes)}\n`);
