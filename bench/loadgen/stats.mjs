// The load generator's clock and summaries (loadgen.mjs, its worker threads).
// Every time is process.hrtime (CLOCK_MONOTONIC): the same clock in every thread and process.
export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// Counts of values per bucket of `width` (bucket i: [i*width, (i+1)*width)).
export function histogram(values, width) {
  const out = [];
  for (const v of values) {
    const i = Math.max(0, Math.floor(v / width));
    while (out.length <= i) out.push(0);
    out[i]++;
  }
  return out;
}

export function percentiles(values) {
  const n = values.length;
  if (n === 0) return { count: 0 };
  const a = Float64Array.from(values).sort();
  const q = (p) => a[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += a[i];
  const r = (x) => Math.round(x * 1000) / 1000;
  return {
    count: n,
    mean: r(sum / n),
    p50: r(q(0.5)),
    p90: r(q(0.9)),
    p99: r(q(0.99)),
    p999: r(q(0.999)),
    max: r(a[n - 1]),
  };
}
