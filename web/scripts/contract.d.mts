export const SCHEMA: string;
export const OUTPUT: string;
export function compileContract(): Promise<string>;
