// A worker thread of the load generator (loadgen.mjs): holds its share of the clients'
// sockets, answers the main thread's commands (init, connect, resume, commands, load,
// stats, close). Its state, `ctx`, is shared with the handshakes (clients.mjs, raw.mjs) and
// the load phases (load.mjs).
import { parentPort, workerData } from "node:worker_threads";
import { monitorEventLoopDelay } from "node:perf_hooks";

import { connectOne, resumeOne } from "./clients.mjs";
import { startLoad } from "./load.mjs";
import { rawConnectOne, rawResumeOne } from "./raw.mjs";
import { nowMs } from "./stats.mjs";

export function workerMain() {
  const { threadIndex } = workerData;
  const clients = []; // {idx, url, token, gw, ws, open, convs: Map}
  const byIdx = new Map();
  const pending = new Map(); // command id -> {resolve, t0}
  const closeCodes = {};
  const lag = monitorEventLoopDelay({ resolution: 5 });
  lag.enable();
  // What the handshakes (clients.mjs, raw.mjs) and the load phases (load.mjs) share.
  const ctx = {
    threadIndex,
    byIdx,
    deflate: false,
    nextId: 1,
    pending,
    closeCodes,
    load: null, // state of the running load phase (load.mjs startLoad)
    lag,
    send,
    onFrame,
  };

  const TYPING_PREFIX = '{"event":"typing:start"';
  const CONV_KEY = '"conversationId":"';

  // Socket.IO clients (a url on /socket.io/, Engine.IO's WebSocket transport): the same
  // protocol in Socket.IO packets. Acks are numbers; sioIds maps them to the request ids.
  const sioIds = new Map();
  let nextAck = 0;
  const SIO_TYPING_PREFIX = '42["typing:start"';

  function send(client, event, id, data) {
    if (!client.sio) {
      client.ws.send(JSON.stringify({ event, id, data }));
      return;
    }
    if (id === undefined) {
      client.ws.send("42" + JSON.stringify([event, data]));
      return;
    }
    const n = nextAck++;
    sioIds.set(n, id);
    client.ws.send("42" + n + JSON.stringify([event, data]));
  }

  function onSioFrame(client, raw) {
    const load = ctx.load;
    if (raw === "2") {
      client.ws.send("3");
      return;
    }
    if (raw.startsWith("43")) {
      let i = 2;
      while (i < raw.length && raw.charCodeAt(i) >= 48 && raw.charCodeAt(i) <= 57) i++;
      const n = Number(raw.slice(2, i));
      const id = sioIds.get(n);
      sioIds.delete(n);
      let env;
      try {
        env = JSON.parse(raw.slice(i))[0];
      } catch {
        return;
      }
      if (id !== undefined && pending.has(id)) {
        const p = pending.get(id);
        pending.delete(id);
        p.resolve(env);
      }
      return;
    }
    if (!raw.startsWith("42[")) return;
    if (load !== null && load.kind === "typing" && raw.startsWith(SIO_TYPING_PREFIX)) {
      const at = raw.indexOf(CONV_KEY);
      if (at > 0) {
        const from = at + CONV_KEY.length;
        load.onTyping(client, raw.slice(from, raw.indexOf('"', from)), raw);
        return;
      }
    }
    let args;
    try {
      args = JSON.parse(raw.slice(2));
    } catch {
      return;
    }
    if (load !== null && args[1]) load.onEvent(client, args[1], raw);
  }

  function onFrame(client, raw) {
    const load = ctx.load;
    if (client.sio) {
      onSioFrame(client, raw);
      return;
    }
    // Fast path for the flood of relayed typing:start frames: no JSON.parse.
    if (load !== null && load.kind === "typing" && raw.startsWith(TYPING_PREFIX)) {
      const at = raw.indexOf(CONV_KEY);
      if (at > 0) {
        const from = at + CONV_KEY.length;
        const conv = raw.slice(from, raw.indexOf('"', from));
        load.onTyping(client, conv, raw);
        return;
      }
    }
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    const id = msg.id;
    if (id !== undefined && id !== null && pending.has(id)) {
      const p = pending.get(id);
      pending.delete(id);
      p.resolve(msg);
      return;
    }
    if (load !== null) load.onEvent(client, msg, raw);
  }

  async function pool(items, concurrency, fn) {
    let i = 0;
    const results = new Array(items.length);
    const runners = [];
    for (let r = 0; r < Math.max(1, Math.min(concurrency, items.length)); r++) {
      runners.push(
        (async () => {
          while (i < items.length) {
            const k = i++;
            results[k] = await fn(items[k]);
          }
        })(),
      );
    }
    await Promise.all(runners);
    return results;
  }

  function request(client, event, data, timeoutMs) {
    return new Promise((resolve) => {
      if (!client.open) {
        resolve({ ok: false, error: "not connected", ms: 0 });
        return;
      }
      const id = `r${threadIndex}-${ctx.nextId++}`;
      const t0 = nowMs();
      const timer = setTimeout(() => {
        pending.delete(id);
        resolve({ ok: false, error: "TIMEOUT(client)", ms: nowMs() - t0 });
      }, timeoutMs);
      pending.set(id, {
        resolve: (msg) => {
          clearTimeout(timer);
          const ms = nowMs() - t0;
          if (msg.success) resolve({ ok: true, ms, data: msg.data });
          else resolve({ ok: false, ms, error: (msg.error && msg.error.code) || "error" });
        },
      });
      send(client, event, id, data);
    });
  }

  function summarizeErrors(results) {
    const errors = {};
    let ok = 0;
    const ms = [];
    for (const r of results) {
      if (r.ok) ok++;
      else errors[r.error] = (errors[r.error] || 0) + 1;
      ms.push(r.ms);
    }
    return { ok, failed: results.length - ok, errors, ms };
  }

  parentPort.on("message", async (m) => {
    try {
      if (m.op === "init") {
        ctx.deflate = !!m.deflate;
        for (const c of m.clients) {
          const client = { ...c, ws: null, open: false, sio: c.url.includes("/socket.io/") };
          clients.push(client);
          byIdx.set(c.idx, client);
        }
        parentPort.postMessage({ ok: true, clients: clients.length });
      } else if (m.op === "connect") {
        const todo = clients.filter((c) => !c.open);
        const one = m.raw ? rawConnectOne : connectOne;
        const results = await pool(todo, m.concurrency || 100, (c) =>
          one(ctx, c, m.timeoutMs || 30000),
        );
        const s = summarizeErrors(results);
        const ext = {};
        for (const c of clients) if (c.open) ext[c.extensions || "none"] = (ext[c.extensions || "none"] || 0) + 1;
        parentPort.postMessage({ ...s, ms: Float64Array.from(s.ms), extensions: ext });
      } else if (m.op === "resume") {
        const one = m.raw ? rawResumeOne : resumeOne;
        const results = await pool(m.items, m.concurrency || 10000, (it) =>
          one(ctx, byIdx.get(it.client), it.url, m.killMs, m.timeoutMs || 30000),
        );
        const s = summarizeErrors(results);
        const hello = Float64Array.from(results.map((r) => r.helloMs));
        parentPort.postMessage({ ...s, ms: Float64Array.from(s.ms), helloMs: hello });
      } else if (m.op === "commands") {
        const results = await pool(m.items, m.concurrency || 50, (it) =>
          request(byIdx.get(it.client), it.event, it.data, m.timeoutMs || 30000),
        );
        const s = summarizeErrors(results);
        parentPort.postMessage({ ...s, ms: Float64Array.from(s.ms) });
      } else if (m.op === "load") {
        const r = await startLoad(ctx, m);
        parentPort.postMessage(r, [r.sameLat.buffer, r.crossLat.buffer, r.ackLat.buffer]);
      } else if (m.op === "stats") {
        let open = 0;
        for (const c of clients) if (c.open) open++;
        parentPort.postMessage({ open, closeCodes });
      } else if (m.op === "close") {
        for (const c of clients) {
          try {
            c.ws?.terminate();
          } catch {}
        }
        parentPort.postMessage({ ok: true });
      }
    } catch (err) {
      parentPort.postMessage({ error: String(err && err.stack ? err.stack : err) });
    }
  });
}
