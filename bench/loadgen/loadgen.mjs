// Parley load generator: many WebSocket clients of the Parley client protocol (protocol.md).
//
// One process = a main thread that takes JSON commands, one per line, on stdin and answers
// each with one JSON line on stdout, plus N worker threads (own event loops) that hold the
// sockets. Clients are spread round-robin over the threads. Typing events carry nothing a
// client chose, so their latency is matched by count: the sender's thread writes the send
// time of the k-th typing:start of a conversation into a SharedArrayBuffer before sending it,
// and the k-th typing:start a receiver gets for that conversation is matched with it (core
// NATS keeps one publisher's order; a drop shifts the match by one event, which only makes
// the reported latency larger). message:send carries its send time in `content`.
// Every time is process.hrtime (CLOCK_MONOTONIC): the same clock in every thread and process.
//
// Commands (main thread):
//   {"op":"init","clients":[{"url","token","gw"}],"deflate":false}
//   {"op":"connect","concurrency":200,"timeoutMs":30000,"raw":false}
//     raw: the handshake on a bare TCP socket (rawConnectOne), not the ws client: a request
//     written at once, the 101 (status, Sec-WebSocket-Accept) and the first frame checked.
//   {"op":"resume","items":[{"client":i,"url"}],"killMs":t,"concurrency":10000}
//   {"op":"commands","items":[{"client":i,"event":"...","data":{...}}],"concurrency":50}
//   {"op":"load","kind":"typing"|"message","convs":[{"conv","sender","senderGw"}],
//    "ratePerSender":200,"durationMs":10000,"drainMs":2000,"contentBytes":64}
//   {"op":"stats"}  {"op":"close"}
//
// Modules: worker.mjs (a worker thread), clients.mjs and raw.mjs (handshakes), load.mjs (load
// phases), stats.mjs (clock, percentiles).
import { Worker, isMainThread } from "node:worker_threads";
import { createInterface } from "node:readline";

import { histogram, nowMs, percentiles } from "./stats.mjs";
import { workerMain } from "./worker.mjs";

// ---------------------------------------------------------------------------- main thread

async function main() {
  const argThreads = process.argv.indexOf("--threads");
  const nThreads = argThreads > 0 ? parseInt(process.argv[argThreads + 1], 10) : 2;
  const workers = [];
  for (let i = 0; i < nThreads; i++) {
    workers.push(new Worker(new URL(import.meta.url), { workerData: { threadIndex: i } }));
  }
  const ask = (w, msg, transfer) =>
    new Promise((resolve, reject) => {
      const onMsg = (r) => {
        w.off("error", onErr);
        if (r && r.error) reject(new Error(r.error));
        else resolve(r);
      };
      const onErr = (e) => {
        w.off("message", onMsg);
        reject(e);
      };
      w.once("message", onMsg);
      w.once("error", onErr);
      w.postMessage(msg, transfer);
    });
  const all = (fn) => Promise.all(workers.map((w, i) => fn(w, i)));
  const merge = (parts, key) => {
    const out = [];
    for (const p of parts) for (const v of p[key]) out.push(v);
    return out;
  };
  const addMaps = (parts, key) => {
    const out = {};
    for (const p of parts)
      for (const [k, v] of Object.entries(p[key] || {})) out[k] = (out[k] || 0) + v;
    return out;
  };
  const sum = (parts, key) => parts.reduce((a, p) => a + (p[key] || 0), 0);
  const owner = (idx) => idx % nThreads;

  const handle = async (cmd) => {
    const t0 = nowMs();
    if (cmd.op === "init") {
      const per = workers.map(() => []);
      cmd.clients.forEach((c, idx) => per[owner(idx)].push({ ...c, idx }));
      await all((w, i) => ask(w, { op: "init", clients: per[i], deflate: !!cmd.deflate }));
      return { ok: true, clients: cmd.clients.length, threads: nThreads };
    }
    if (cmd.op === "connect") {
      const parts = await all((w) => ask(w, cmd));
      const wallMs = nowMs() - t0;
      const ok = sum(parts, "ok");
      return {
        ok,
        failed: sum(parts, "failed"),
        errors: addMaps(parts, "errors"),
        extensions: addMaps(parts, "extensions"),
        wallMs,
        perSecond: ok / (wallMs / 1000),
        latencyMs: percentiles(merge(parts, "ms")),
      };
    }
    if (cmd.op === "resume") {
      const per = workers.map(() => []);
      for (const it of cmd.items) per[owner(it.client)].push(it);
      const parts = await all((w, i) => ask(w, { ...cmd, items: per[i] }));
      const ok = sum(parts, "ok");
      const lat = merge(parts, "ms");
      const hello = merge(parts, "helloMs").filter((v) => v >= 0);
      return {
        ok,
        failed: sum(parts, "failed"),
        errors: addMaps(parts, "errors"),
        wallMs: lat.length ? Math.max(...lat) : 0,
        perSecond: 0,
        latencyMs: percentiles(lat),
        // The timeline: how many got `reconnected` / were back, per 0.5 s after the kill.
        reconnectedMs: percentiles(hello),
        timeline: { reconnected: histogram(hello, 500), back: histogram(lat, 500) },
      };
    }
    if (cmd.op === "commands") {
      const per = workers.map(() => []);
      for (const it of cmd.items) per[owner(it.client)].push(it);
      const parts = await all((w, i) =>
        ask(w, { op: "commands", items: per[i], concurrency: cmd.concurrency, timeoutMs: cmd.timeoutMs }),
      );
      const wallMs = nowMs() - t0;
      const ok = sum(parts, "ok");
      return {
        ok,
        failed: sum(parts, "failed"),
        errors: addMaps(parts, "errors"),
        wallMs,
        perSecond: ok / (wallMs / 1000),
        latencyMs: percentiles(merge(parts, "ms")),
      };
    }
    if (cmd.op === "load") {
      const nConv = cmd.convs.length;
      const cap = Math.ceil((cmd.ratePerSender * cmd.durationMs) / 1000) + 16;
      const countsBuf = new SharedArrayBuffer(4 * nConv);
      const timesBuf = new SharedArrayBuffer(8 * nConv * (cmd.kind === "typing" ? cap : 1));
      const start = nowMs() + 300;
      const cpu0 = process.cpuUsage();
      const parts = await all((w) =>
        ask(w, { ...cmd, op: "load", cap, countsBuf, timesBuf, t0: start }),
      );
      const cpu = process.cpuUsage(cpu0);
      const same = merge(parts, "sameLat");
      const cross = merge(parts, "crossLat");
      const delivered = addMaps(parts, "delivered");
      const maxAcked = {};
      for (const p of parts)
        for (const [k, v] of Object.entries(p.maxAckedSeq)) maxAcked[k] = Math.max(maxAcked[k] || 0, v);
      const convMax = {};
      for (const p of parts)
        for (const [k, v] of Object.entries(p.convMax)) convMax[k] = Math.max(convMax[k] || 0, v);
      const seqEnd = {};
      for (const p of parts) Object.assign(seqEnd, p.seqEnd);
      // Receivers whose last seq is below the conversation's last acked seq missed the tail.
      let tailMissing = 0;
      for (const [key, last] of Object.entries(seqEnd)) {
        const ci = key.split(":")[1];
        if (maxAcked[ci] !== undefined && last < maxAcked[ci]) tailMissing += maxAcked[ci] - last;
      }
      return {
        kind: cmd.kind,
        sent: sum(parts, "sent"),
        sendErrors: sum(parts, "sendErrors"),
        delivered: Object.values(delivered).reduce((a, b) => a + b, 0),
        echoes: sum(parts, "echoes"),
        unmatched: sum(parts, "unmatched"),
        foreign: sum(parts, "foreign"),
        acked: sum(parts, "acked"),
        ackFailed: addMaps(parts, "ackFailed"),
        lostAcks: sum(parts, "lostAcks"),
        seqGaps: sum(parts, "seqGaps"),
        seqDuplicates: sum(parts, "seqDup"),
        seqTailMissing: tailMissing,
        messagesSeen: Object.values(convMax).reduce((a, b) => a + b, 0),
        otherEvents: addMaps(parts, "otherEvents"),
        samples: Object.assign({}, ...parts.map((p) => p.samples)),
        senderBehindMax: Math.max(...parts.map((p) => p.behindMax)),
        latencyMs: {
          all: percentiles([...same, ...cross]),
          same: percentiles(same),
          cross: percentiles(cross),
          ack: percentiles(merge(parts, "ackLat")),
        },
        generator: {
          threads: nThreads,
          // process.cpuUsage() is process-wide: every thread, main included.
          cpuPercent: (((cpu.user + cpu.system) / 1000) / (nowMs() - start)) * 100,
          loopLagP99Ms: Math.max(...parts.map((p) => p.lagP99Ms)),
          loopLagMaxMs: Math.max(...parts.map((p) => p.lagMaxMs)),
        },
        wallMs: nowMs() - t0,
      };
    }
    if (cmd.op === "stats") {
      const parts = await all((w) => ask(w, cmd));
      return { open: sum(parts, "open"), closeCodes: addMaps(parts, "closeCodes") };
    }
    if (cmd.op === "close") {
      await all((w) => ask(w, cmd));
      return { ok: true };
    }
    return { error: `unknown op ${cmd.op}` };
  };

  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let cmd;
    let out;
    try {
      cmd = JSON.parse(line);
      out = await handle(cmd);
    } catch (err) {
      out = { error: String(err && err.stack ? err.stack : err) };
    }
    process.stdout.write(JSON.stringify({ op: cmd && cmd.op, ...out }) + "\n");
    if (cmd && cmd.op === "close") break;
  }
  await Promise.all(workers.map((w) => w.terminate()));
  process.exit(0);
}

if (isMainThread) main();
else workerMain();
