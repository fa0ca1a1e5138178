// One client's handshakes through the ws client (a worker thread's, worker.mjs): the connect
// (bench connects, ws) and the resume of a killed gateway's session on another (bench
// storm, ws). `ctx` is the worker's state (worker.mjs).
import WebSocket from "ws";

import { nowMs } from "./stats.mjs";

// A ws client's socket to `url` for `client` (its token, the worker's deflate setting): a
// refusal, an error or a close ends the attempt (`finish`); every close code is counted.
function openWs(ctx, client, url, timeoutMs, finish) {
  const ws = new WebSocket(url, {
    headers: { Authorization: `Bearer ${client.token}` },
    perMessageDeflate: ctx.deflate,
    skipUTF8Validation: true, // the generator's own CPU: the frames are parsed anyway
    handshakeTimeout: timeoutMs,
  });
  client.ws = ws;
  ws.on("unexpected-response", (_req, res) => finish(false, `http ${res.statusCode}`));
  ws.on("error", (err) => finish(false, err.code || String(err.message).slice(0, 80)));
  ws.on("close", (code) => {
    client.open = false;
    ctx.closeCodes[code] = (ctx.closeCodes[code] || 0) + 1;
    finish(false, `closed ${code}`);
  });
  return ws;
}

export function connectOne(ctx, client, timeoutMs) {
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
    const ws = openWs(ctx, client, client.url, timeoutMs, finish);
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
      if (!isBinary) ctx.onFrame(client, data.toString());
    });
  });
}

// A resume's start: the client's old socket (a ws client, or a raw one's { terminate }) is
// dropped without its events heard; the URL names the client's session.
export function resumeUrl(client, url) {
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
export const JOINED_PREFIX = '{"event":"conversation:joined"';
export const PRESENCE_PREFIX = '{"event":"presence:';
export function resumeOne(ctx, client, url, killMs, timeoutMs) {
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
    const ws = openWs(ctx, client, resumeUrl(client, url), timeoutMs, finish);
    client.url = url;
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      const raw = data.toString();
      if (done) {
        // Nothing asked, nothing measured: the presence of the others coming back
        // (~10 frames per client at 20 members) is not parsed.
        if (ctx.load === null && ctx.pending.size === 0) return;
        ctx.onFrame(client, raw);
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
