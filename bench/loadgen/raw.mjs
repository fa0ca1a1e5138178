// The handshakes on a bare TCP socket (a worker thread's, worker.mjs): the connect (bench
// connects, raw) and the resume (bench storm, raw). `ctx` is the worker's state.
import { createHash, randomBytes } from "node:crypto";
import { connect as tcpConnect } from "node:net";

import { JOINED_PREFIX, PRESENCE_PREFIX, resumeUrl } from "./clients.mjs";
import { nowMs } from "./stats.mjs";

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
export function rawConnectOne(ctx, client, timeoutMs) {
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

// resumeOne on a bare TCP socket (bench storm, raw): the request head of rawConnectOne
// with ?session=, then the server's frames read off the socket (unmasked, unfragmented:
// the gateway sends each frame whole), none of the ws client's per-socket machinery.
// Checked as resumeOne: 101 and Sec-WebSocket-Accept, `reconnected` first, then one
// `conversation:joined` per conversation the hello restored, an `error` frame fails.
export function rawResumeOne(ctx, client, url, killMs, timeoutMs) {
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
          ctx.closeCodes[code] = (ctx.closeCodes[code] || 0) + 1;
          finish(false, `closed ${code}`);
        } else if (op === 1) {
          onText(payload.toString("utf8"));
        } // pings are not answered: a resume is over long before a keepalive timeout
      }
      if (buf !== null && buf.length === 0) buf = null;
    });
  });
}
