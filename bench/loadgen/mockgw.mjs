// A minimal stand-in for the gateway, used only to check the load generator itself
// (`python -m bench --scenario selfcheck`): how many deliveries/s the generator can take
// when the server side costs almost nothing. Speaks just enough of the protocol: connected,
// conversation:create/join replies, typing:start relay, message:send with seq + message:new.
// Serializes each event once per room, like a gateway should.
import { WebSocketServer } from "ws";

const port = parseInt(process.argv[2] || "0", 10);
const rooms = new Map(); // conversationId -> {members: Set<ws>, seq}
const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false });
const now = () => new Date().toISOString();

wss.on("connection", (ws, req) => {
  const auth = req.headers.authorization || "";
  let sub = "anon";
  try {
    sub = JSON.parse(Buffer.from(auth.split(".")[1], "base64url").toString()).sub;
  } catch {}
  ws.send(JSON.stringify({ event: "connected", success: true, data: { sessionId: sub }, timestamp: now() }));
  ws.on("message", (raw) => {
    let m;
    try {
      m = JSON.parse(raw.toString());
    } catch {
      return;
    }
    const d = m.data || {};
    const room = () => {
      let r = rooms.get(d.conversationId);
      if (!r) rooms.set(d.conversationId, (r = { members: new Set(), seq: 0 }));
      return r;
    };
    const reply = (data) =>
      m.id && ws.send(JSON.stringify({ event: m.event, id: m.id, success: true, data, timestamp: now() }));
    if (m.event === "conversation:create") {
      reply({ _id: d.conversationId });
    } else if (m.event === "conversation:join") {
      room().members.add(ws);
      reply({ conversationId: d.conversationId });
    } else if (m.event === "typing:start") {
      const frame = JSON.stringify({
        event: "typing:start",
        success: true,
        data: { conversationId: d.conversationId, userId: sub },
        timestamp: now(),
      });
      for (const peer of room().members) if (peer !== ws) peer.send(frame);
    } else if (m.event === "message:send") {
      const r = room();
      const seq = ++r.seq;
      const msg = { _id: `m${seq}`, conversationId: d.conversationId, content: d.content, seq };
      reply(msg);
      const frame = JSON.stringify({
        event: "message:new",
        success: true,
        data: msg,
        conversationId: d.conversationId,
        seq,
        timestamp: now(),
      });
      for (const peer of r.members) peer.send(frame);
    }
  });
  ws.on("close", () => {
    for (const r of rooms.values()) r.members.delete(ws);
  });
});
wss.on("listening", () => process.stdout.write(`${wss.address().port}\n`));
