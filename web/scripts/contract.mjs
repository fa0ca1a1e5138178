// The web's protocol types, compiled from the Python contract's JSON Schema
// (src/generated/contract.schema.json, written by `python -m parley_contract.wire_schema`)
// by json-schema-to-typescript. `make generate` runs both steps; src/generated.test.ts
// fails when the committed contract.ts is not what this compiles.
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { compile } from 'json-schema-to-typescript';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
export const SCHEMA = here('../src/generated/contract.schema.json');
export const OUTPUT = here('../src/generated/contract.ts');

const BANNER = `/**
 * GENERATED from libs/contract (python -m parley_contract.wire_schema, then
 * json-schema-to-typescript via web/scripts/contract.mjs): do not edit; run \`make generate\`.
 * src/generated.test.ts fails when this file and the contract drift apart.
 */`;

export async function compileContract() {
  const schema = JSON.parse(await readFile(SCHEMA, 'utf8'));
  return compile(schema, 'ParleyContract', {
    bannerComment: BANNER,
    enableConstEnums: false,
    unreachableDefinitions: true,
    format: true,
    style: { singleQuote: true, printWidth: 100 },
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await writeFile(OUTPUT, await compileContract());
}
