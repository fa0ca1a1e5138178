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
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createInterface } from "node:readline";
import WebSocket from "ws";
import { createHash, randomBytes } from "node:crypto";
import { connect as tcpConnect } from "node:net";

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// Counts of values per bucket of `width` (bucket i: [i*width, (i+1)*width)).
function histogram(values, width) {
  const out = [];
  for (const v of values) {
    const i = Math.max(0, Math.floor(v / width));
    while (out.length <= i) out.push(0);
    out[i]++;
  }
  return out;
}

function percentiles(values) {
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

// ---------------------------------------------------------------------------- worker thread

function workerMain() {
  const { threadIndex } = workerData;
  const clients = []; // {idx, url, token, gw, ws, open, convs: Map}
  const byIdx = new Map();
  let deflate = false;
  let nextId = 1;
  const pending = new Map(); // command id -> {resolve, t0}
  const closeCodes = {};
  let load = null; // state of the running load phase
  const lag = monitorEventLoopDelay({ resolution: 5 });
  lag.enable();

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

  function connectOne(client, timeoutMs) {
    return new Promise((resolve) => {
      const t0 = nowMs();
      let done = false;
      const finish = (ok, error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve({ ok, error, ms: nowMs() - t0 });
      };
      const timer = setTimeout(() => {
        finish(false, "timeout");
        try {
          client.ws?.terminate();
        } catch {}
      }, timeoutMs);
      const ws = new WebSocket(client.url, {
        headers: { Authorization: `Bearer ${client.token}` },
        perMessageDeflate: deflate,
        skipUTF8Validation: true, // the generator's own CPU: the frames are parsed anyway
        handshakeTimeout: timeoutMs,
      });
      client.ws = ws;
      ws.on("unexpected-response", (_req, res) => finish(false, `http ${res.statusCode}`));
      ws.on("error", (err) => finish(false, err.code || String(err.message).slice(0, 80)));
      ws.on("close", (code) => {
        client.open = false;
        closeCodes[code] = (closeCodes[code] || 0) + 1;
        finish(false, `closed ${code}`);
      });
      ws.on("message", (data, isBinary) => {
        if (!done) {
          let text = data.toString();
          if (client.sio) {
            if (text.startsWith("0")) {
              ws.send("40"); // Socket.IO CONNECT: the token went with the handshake
              return;
            }
            if (text.startsWith("40") || text === "2") {
              if (text === "2") ws.send("3");
              return;
            }
            text = text.startsWith("42[") ? JSON.stringify(JSON.parse(text.slice(2))[1]) : text;
          }
          let msg = null;
          try {
            msg = JSON.parse(text);
          } catch {}
          if (msg && (msg.event === "connected" || msg.event === "reconnected")) {
            client.open = true;
            client.extensions = ws.extensions;
            client.session = msg.data && msg.data.sessionId;
            finish(true);
          } else {
            finish(false, `first frame ${msg && msg.event}`);
          }
          return;
        }
        if (!isBinary) onFrame(client, data.toString());
      });
    });
  }

  // The connect handshake on a bare TCP socket (bench connects, raw): the same bytes a ws
  // client sends (GET, Upgrade, Sec-WebSocket-Key, version 13, the token), none of its
  // per-socket machinery (http.ClientRequest, the upgrade event, a Receiver and a Sender),
  // so that the generator's own CPU per connect stays well below the gateway's. Checked: the
  // status line (101), Sec-WebSocket-Accept against the key, and that the first frame is an
  // unmasked text frame whose JSON is the `connected`/`reconnected` hello.
  const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"; // RFC 6455 1.3
  // A raw upgrade request to `u` (a URL): its head, and the Sec-WebSocket-Accept the
  // server must answer with.
  function rawUpgrade(u, token) {
    const key = randomBytes(16).toString("base64");
    return {
      accept: createHash("sha1").update(key + WS_GUID).digest("base64"),
      head:
        `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\n` +
        `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
        `Sec-WebSocket-Version: 13\r\nAuthorization: Bearer ${token}\r\n\r\n`,
    };
  }
  // The server's answer to it at the start of `buf`: null while its head is incomplete, else
  // { error } (not a 101, or a wrong Sec-WebSocket-Accept) or { body } (where the head ends).
  function upgradeAnswer(buf, accept) {
    const end = buf.indexOf("\r\n\r\n");
    if (end < 0) return null;
    const text = buf.toString("latin1", 0, end);
    if (!text.startsWith("HTTP/1.1 101 ")) return { error: `http ${text.slice(9, 12)}` };
    const m = /\r\nsec-websocket-accept: *([^\r]*)/i.exec(text);
    if (!m || m[1] !== accept) return { error: "bad accept" };
    return { body: end + 4 };
  }
  // A raw client's socket to `u`: the request head written once connected; an error or a
  // close ends the attempt (`finish`); the client can drop it (client.ws.terminate).
  function rawSocket(client, u, head, finish) {
    const sock = tcpConnect({ host: u.hostname, port: Number(u.port) || 80, noDelay: true });
    client.ws = { terminate: () => sock.destroy() };
    sock.on("connect", () => sock.write(head));
    sock.on("error", (err) => finish(false, err.code || String(err.message).slice(0, 80)));
    sock.on("close", () => {
      client.open = false;
      finish(false, "closed");
    });
    return sock;
  }
  function rawConnectOne(client, timeoutMs) {
    return new Promise((resolve) => {
      const t0 = nowMs();
      const url = new URL(client.url);
      const { accept, head } = rawUpgrade(url, client.token);
      let done = false;
      let buf = null;
      const finish = (ok, error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (!ok) sock.destroy();
        resolve({ ok, error, ms: nowMs() - t0 });
      };
      const timer = setTimeout(() => finish(false, "timeout"), timeoutMs);
      const sock = rawSocket(client, url, head, finish);
      sock.on("data", (data) => {
        if (done) return; // idle afterwards: nothing is sent to a raw client here
        buf = buf === null ? data : Buffer.concat([buf, data]);
        const answer = upgradeAnswer(buf, accept);
        if (answer === null) return;
        if (answer.error) {
          finish(false, answer.error);
          return;
        }
        const f = answer.body;
        if (buf.length < f + 2) return;
        let len = buf[f + 1];
        let p = f + 2;
        if (buf[f] !== 0x81 || len > 126) {
          finish(false, "first frame not a short text frame");
          return;
        }
        if (len === 126) {
          if (buf.length < p + 2) return;
          len = buf.readUInt16BE(p);
          p += 2;
        }
        if (buf.length < p + len) return;
        let msg = null;
        try {
          msg = JSON.parse(buf.toString("utf8", p, p + len));
        } catch {}
        if (msg && (msg.event === "connected" || msg.event === "reconnected")) {
          client.open = true;
          client.session = msg.data && msg.data.sessionId;
          buf = null;
          finish(true);
        } else {
          finish(false, `first frame ${msg && msg.event}`);
        }
      });
    });
  }

  // A resume's start: the client's old socket (a ws client, or a raw one's { terminate }) is
  // dropped without its events heard; the URL names the client's session.
  function resumeUrl(client, url) {
    const old = client.ws;
    if (old) {
      if (old.removeAllListeners) {
        old.removeAllListeners();
        old.on("error", () => {});
      }
      try {
        old.terminate();
      } catch {}
    }
    client.open = false;
    const sep = url.includes("?") ? "&" : "?";
    return `${url}${sep}session=${encodeURIComponent(client.session || "")}`;
  }

  // A client of a killed gateway resumes its session on another (bench storm): resolved
  // when it got `reconnected` and a `conversation:joined` for every conversation the
  // hello restored; ms counts from the kill (killMs, the same monotonic clock as Python's).
  // The frames a resuming client only has to recognize (the gateway writes "event" first).
  const JOINED_PREFIX = '{"event":"conversation:joined"';
  const PRESENCE_PREFIX = '{"event":"presence:';
  function resumeOne(client, url, killMs, timeoutMs) {
    return new Promise((resolve) => {
      let done = false;
      let waiting = -1; // conversations still to be joined again (-1: no hello yet)
      let helloMs = -1; // when `reconnected` came (the timeline: connected vs back)
      const finish = (ok, error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve({ ok, error, ms: nowMs() - killMs, helloMs });
      };
      const timer = setTimeout(() => finish(false, "timeout"), timeoutMs);
      const ws = new WebSocket(resumeUrl(client, url), {
        headers: { Authorization: `Bearer ${client.token}` },
        perMessageDeflate: deflate,
        skipUTF8Validation: true,
        handshakeTimeout: timeoutMs,
      });
      client.ws = ws;
      client.url = url;
      ws.on("unexpected-response", (_req, res) => finish(false, `http ${res.statusCode}`));
      ws.on("error", (err) => finish(false, err.code || String(err.message).slice(0, 80)));
      ws.on("close", (code) => {
        client.open = false;
        closeCodes[code] = (closeCodes[code] || 0) + 1;
        finish(false, `closed ${code}`);
      });
      ws.on("message", (data, isBinary) => {
        if (isBinary) return;
        const raw = data.toString();
        if (done) {
          // Nothing asked, nothing measured: the presence of the others coming back
          // (~10 frames per client at 20 members) is not parsed.
          if (load === null && pending.size === 0) return;
          onFrame(client, raw);
          return;
        }
        if (waiting > 0 && raw.startsWith(JOINED_PREFIX)) {
          if (--waiting === 0) finish(true);
          return;
        }
        if (waiting >= 0 && raw.startsWith(PRESENCE_PREFIX)) return;
        let msg = null;
        try {
          msg = JSON.parse(raw);
        } catch {}
        if (!msg) return;
        if (waiting < 0) {
          if (msg.event !== "reconnected") {
            finish(false, `first frame ${msg.event}`);
            return;
          }
          client.open = true;
          helloMs = nowMs() - killMs;
          waiting = ((msg.data && msg.data.conversations) || []).length;
        } else if (msg.event === "conversation:joined") {
          waiting--;
        } else if (msg.event === "error") {
          finish(false, `error ${msg.error && msg.error.code}`);
          return;
        }
        if (waiting === 0) finish(true);
      });
    });
  }

  // resumeOne on a bare TCP socket (bench storm, raw): the request head of rawConnectOne
  // with ?session=, then the server's frames read off the socket (unmasked, unfragmented:
  // the gateway sends each frame whole), none of the ws client's per-socket machinery.
  // Checked as resumeOne: 101 and Sec-WebSocket-Accept, `reconnected` first, then one
  // `conversation:joined` per conversation the hello restored, an `error` frame fails.
  function rawResumeOne(client, url, killMs, timeoutMs) {
    return new Promise((resolve) => {
      let done = false;
      let waiting = -1;
      let helloMs = -1;
      let upgraded = false;
      let buf = null;
      const u = new URL(resumeUrl(client, url));
      const { accept, head } = rawUpgrade(u, client.token);
      const finish = (ok, error) => {
        if (done) return;
        done = true;
        buf = null;
        clearTimeout(timer);
        if (!ok) sock.destroy();
        resolve({ ok, error, ms: nowMs() - killMs, helloMs });
      };
      const timer = setTimeout(() => finish(false, "timeout"), timeoutMs);
      const sock = rawSocket(client, u, head, finish);
      const onText = (text) => {
        if (waiting < 0) {
          let msg = null;
          try {
            msg = JSON.parse(text);
          } catch {}
          if (!msg || msg.event !== "reconnected") {
            finish(false, `first frame ${msg && msg.event}`);
            return;
          }
          client.open = true;
          client.session = msg.data && msg.data.sessionId;
          helloMs = nowMs() - killMs;
          waiting = ((msg.data && msg.data.conversations) || []).length;
        } else if (text.startsWith(JOINED_PREFIX)) {
          waiting--;
        } else if (!text.startsWith(PRESENCE_PREFIX)) {
          let msg = null;
          try {
            msg = JSON.parse(text);
          } catch {}
          if (msg && msg.event === "error") {
            finish(false, `error ${msg.error && msg.error.code}`);
            return;
          }
        }
        if (waiting === 0) finish(true);
      };
      sock.on("data", (data) => {
        if (done) return; // afterwards the frames are not read (nothing is measured)
        buf = buf === null ? data : Buffer.concat([buf, data]);
        if (!upgraded) {
          const answer = upgradeAnswer(buf, accept);
          if (answer === null) return;
          if (answer.error) {
            finish(false, answer.error);
            return;
          }
          upgraded = true;
          buf = buf.subarray(answer.body);
        }
        while (!done && buf.length >= 2) {
          if ((buf[0] & 0x80) === 0) {
            finish(false, "fragmented frame"); // the gateway never fragments
            return;
          }
          const op = buf[0] & 0x0f;
          let len = buf[1] & 0x7f;
          let p = 2;
          if (len === 126) {
            if (buf.length < 4) return;
            len = buf.readUInt16BE(2);
            p = 4;
          } else if (len === 127) {
            if (buf.length < 10) return;
            len = Number(buf.readBigUInt64BE(2));
            p = 10;
          }
          if (buf.length < p + len) return;
          const payload = buf.subarray(p, p + len);
          buf = buf.subarray(p + len);
          if (op === 8) {
            const code = len >= 2 ? payload.readUInt16BE(0) : 1005;
            closeCodes[code] = (closeCodes[code] || 0) + 1;
            finish(false, `closed ${code}`);
          } else if (op === 1) {
            onText(payload.toString("utf8"));
          } // pings are not answered: a resume is over long before a keepalive timeout
        }
        if (buf !== null && buf.length === 0) buf = null;
      });
    });
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
      const id = `r${threadIndex}-${nextId++}`;
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

  // ------------------------------------------------------------------ load phases

  function startLoad(job) {
    const { kind, convs, ratePerSender, durationMs, drainMs, contentBytes, t0 } = job;
    const counts = new Int32Array(job.countsBuf);
    const times = new Float64Array(job.timesBuf);
    const cap = job.cap;
    const convIndex = new Map(convs.map((c, i) => [c.conv, i]));
    const isSenderOf = new Map(); // client idx -> conv index
    convs.forEach((c, i) => isSenderOf.set(c.sender, i));
    const st = {
      sent: 0,
      sendErrors: 0,
      sameLat: [],
      crossLat: [],
      echoes: 0,
      unmatched: 0,
      foreign: 0,
      ackLat: [],
      acked: 0,
      ackFailed: {},
      seqGaps: 0,
      seqDup: 0,
      lastSeq: {}, // `${client}:${convIdx}` -> last seq seen
      maxAckedSeq: {}, // convIdx -> max acked seq
      delivered: {}, // convIdx -> deliveries to non-senders
      behindMax: 0,
      otherEvents: {},
      samples: {},
      convMax: {}, // convIdx -> most message:new one receiver got (messages stored, seen)
    };
    const recvCount = new Map(); // `${client}:${convIdx}` -> count (typing)
    const pad = contentBytes > 24 ? "x".repeat(contentBytes - 24) : "";

    const onTyping = (client, conv, raw) => {
        const t = nowMs();
        if (st.samples["typing:start"] === undefined) st.samples["typing:start"] = raw.slice(0, 800);
        const ci = convIndex.get(conv);
        if (ci === undefined) {
          st.foreign++;
          return;
        }
        if (isSenderOf.get(client.idx) === ci) {
          st.echoes++;
          return;
        }
        const key = client.idx * 4096 + ci;
        const k = recvCount.get(key) || 0;
        recvCount.set(key, k + 1);
        st.delivered[ci] = (st.delivered[ci] || 0) + 1;
        if (k >= Atomics.load(counts, ci) || k >= cap) {
          st.unmatched++;
          return;
        }
        const lat = t - times[ci * cap + k];
        if (client.gw === convs[ci].senderGw) st.sameLat.push(lat);
        else st.crossLat.push(lat);
    };

    const onEvent = (client, msg, raw) => {
      const ev = msg.event;
      if (!(ev in st.samples)) st.samples[ev] = raw.slice(0, 800);
      if (kind === "typing" && ev === "typing:start") {
        const conv = msg.conversationId ?? (msg.data && msg.data.conversationId);
        onTyping(client, conv, raw);
        return;
      }
      if (kind === "message" && ev === "message:new") {
        const t = nowMs();
        const conv = msg.conversationId ?? (msg.data && msg.data.conversationId);
        const ci = convIndex.get(conv);
        if (ci === undefined) {
          st.foreign++;
          return;
        }
        const key = `${client.idx}:${ci}`;
        const seq = msg.seq;
        const last = st.lastSeq[key];
        if (typeof seq === "number") {
          if (last !== undefined) {
            if (seq > last + 1) st.seqGaps += seq - last - 1;
            else if (seq <= last) st.seqDup++;
          }
          if (last === undefined || seq > last) st.lastSeq[key] = seq;
        }
        if (isSenderOf.get(client.idx) === ci) {
          st.echoes++;
          return;
        }
        st.delivered[ci] = (st.delivered[ci] || 0) + 1;
        const rkey = client.idx * 4096 + ci;
        const n = (recvCount.get(rkey) || 0) + 1;
        recvCount.set(rkey, n);
        if (!(st.convMax[ci] >= n)) st.convMax[ci] = n;
        const content = msg.data && msg.data.content;
        const ts = typeof content === "string" ? parseFloat(content) : NaN;
        if (Number.isNaN(ts)) {
          st.unmatched++;
          return;
        }
        const lat = t - ts;
        if (client.gw === convs[ci].senderGw) st.sameLat.push(lat);
        else st.crossLat.push(lat);
      } else {
        st.otherEvents[ev] = (st.otherEvents[ev] || 0) + 1;
      }
    };

    // Senders owned by this thread.
    const mySenders = [];
    convs.forEach((c, ci) => {
      const client = byIdx.get(c.sender);
      // Senders are spread evenly over one sending period (no synchronized bursts).
      if (client) mySenders.push({ client, ci, n: 0, phase: ci / convs.length });
    });
    const endAt = t0 + durationMs;
    let timer = null;
    const tick = () => {
      const now = nowMs();
      if (now < t0) return;
      const elapsed = Math.min(now, endAt) - t0;
      const periods = (elapsed * ratePerSender) / 1000;
      for (const s of mySenders) {
        if (!s.client.open) continue;
        const due = Math.floor(periods + 1 - s.phase);
        if (due - s.n > st.behindMax) st.behindMax = due - s.n;
        while (s.n < due) {
          const k = s.n++;
          const ts = nowMs();
          try {
            if (kind === "typing") {
              if (k < cap) {
                times[s.ci * cap + k] = ts;
                Atomics.store(counts, s.ci, k + 1);
              }
              if (s.client.sio) send(s.client, "typing:start", undefined, { conversationId: convs[s.ci].conv });
              else
                s.client.ws.send(
                  `{"event":"typing:start","data":{"conversationId":"${convs[s.ci].conv}"}}`,
                );
            } else {
              const id = `m${threadIndex}-${nextId++}`;
              const content = ts.toFixed(3) + " " + pad;
              pending.set(id, {
                resolve: (msg) => {
                  const ms = nowMs() - ts;
                  if (msg.success) {
                    st.acked++;
                    st.ackLat.push(ms);
                    const seq = msg.data && msg.data.seq;
                    if (typeof seq === "number" && !(st.maxAckedSeq[s.ci] >= seq))
                      st.maxAckedSeq[s.ci] = seq;
                  } else {
                    const code = (msg.error && msg.error.code) || "error";
                    st.ackFailed[code] = (st.ackFailed[code] || 0) + 1;
                  }
                },
              });
              send(s.client, "message:send", id, {
                conversationId: convs[s.ci].conv,
                content,
                clientMessageId: id,
              });
            }
            st.sent++;
          } catch {
            st.sendErrors++;
          }
        }
      }
      if (now >= endAt && timer !== null) {
        clearInterval(timer);
        timer = null;
      }
    };
    if (mySenders.length > 0) timer = setInterval(tick, 1);
    const cpu0 = process.cpuUsage();
    lag.reset();
    load = { kind, onEvent, onTyping, st };
    return new Promise((resolve) => {
      setTimeout(
        () => {
          if (timer !== null) clearInterval(timer);
          load = null;
          // Replies that never came are failed acks.
          let lostAcks = 0;
          for (const [id] of pending) {
            if (id.startsWith("m")) {
              pending.delete(id);
              lostAcks++;
            }
          }
          const cpu = process.cpuUsage(cpu0);
          resolve({
            ...st,
            lostAcks,
            lastSeq: undefined,
            seqEnd: st.lastSeq,
            sameLat: Float64Array.from(st.sameLat),
            crossLat: Float64Array.from(st.crossLat),
            ackLat: Float64Array.from(st.ackLat),
            cpuMs: (cpu.user + cpu.system) / 1000,
            lagP99Ms: lag.percentile(99) / 1e6,
            lagMaxMs: lag.max / 1e6,
          });
        },
        Math.max(0, t0 - nowMs()) + durationMs + drainMs,
      );
    });
  }

  parentPort.on("message", async (m) => {
    try {
      if (m.op === "init") {
        deflate = !!m.deflate;
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
          one(c, m.timeoutMs || 30000),
        );
        const s = summarizeErrors(results);
        const ext = {};
        for (const c of clients) if (c.open) ext[c.extensions || "none"] = (ext[c.extensions || "none"] || 0) + 1;
        parentPort.postMessage({ ...s, ms: Float64Array.from(s.ms), extensions: ext });
      } else if (m.op === "resume") {
        const one = m.raw ? rawResumeOne : resumeOne;
        const results = await pool(m.items, m.concurrency || 10000, (it) =>
          one(byIdx.get(it.client), it.url, m.killMs, m.timeoutMs || 30000),
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
        const r = await startLoad(m);
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
