// @vitest-environment node
// The committed protocol types are what the contract compiles to today (regenerate with
// `make generate`: python -m parley_contract.wire_schema, then scripts/contract.mjs).
// The Python side (tests in libs/contract) keeps contract.schema.json equal to the models.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { compileContract, OUTPUT } from '../scripts/contract.mjs';
import { ErrorCode, Event } from './generated/contract';
import { Ev } from './protocol';

describe('generated contract types', () => {
  it('contract.ts is what contract.schema.json compiles to', async () => {
    const fresh = await compileContract();
    const committed = readFileSync(OUTPUT, 'utf8');
    // A drift means the Python contract changed: run `make generate` and commit the result.
    expect(committed).toBe(fresh);
  }, 30000);

  it('event names and error codes come from the contract', () => {
    expect(Ev.MESSAGE_SEND).toBe('message:send');
    expect(Ev).toBe(Event);
    expect(Object.values(Event)).toContain('message:stream-delta');
    expect(ErrorCode.VALIDATION_ERROR).toBe('VALIDATION_ERROR');
  });
});
