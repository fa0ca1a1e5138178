// Drives real socket.io-client sockets for the pytest suite: JSON lines in (commands), JSON
// lines out (everything each socket sees). Written the way an app uses the library:
// io(url, {auth: {token}}), socket.emit(event, data, ack), socket.on(event, handler).
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const sockets = new Map();

function out(msg) {
  process.stdout.write(JSON.stringify(msg) + "\n");
}

function open(cmd) {
  const socket = io(cmd.url, { forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 500, ...cmd.opts });
  const name = cmd.sock;
  sockets.set(name, socket);
  socket.on("connect", () => {
    out({ sock: name, type: "connect", id: socket.id, recovered: socket.recovered, transport: socket.io.engine.transport.name });
  });
  socket.on("connect_error", (err) => {
    out({ sock: name, type: "connect_error", message: err.message, data: err.data ?? null });
  });
  socket.on("disconnect", (reason, details) => {
    out({ sock: name, type: "disconnect", reason, description: details?.description?.message ?? null });
  });
  socket.onAny((event, ...args) => {
    out({ sock: name, type: "event", event, payload: args[0] ?? null, extra: args.slice(1) });
  });
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    out({ sock: name, type: "engine_open", transport: engine.transport.name });
    engine.on("upgrade", (transport) => out({ sock: name, type: "upgrade", transport: transport.name }));
  });
}

const ops = {
  open,
  emit(cmd) {
    const socket = sockets.get(cmd.sock);
    // {"$buffer": "<hex>"} stands for a Buffer (a binary packet)
    const toArg = (a) => (a && typeof a === "object" && "$buffer" in a ? Buffer.from(a.$buffer, "hex") : a);
    const args = (cmd.args ?? (cmd.data === undefined ? [] : [cmd.data])).map(toArg);
    if (cmd.req === undefined) {
      socket.emit(cmd.event, ...args);
      return;
    }
    socket.timeout(cmd.timeout ?? 10000).emit(cmd.event, ...args, (err, ...reply) => {
      out({ sock: cmd.sock, type: "ack", req: cmd.req, error: err ? String(err.message ?? err) : null, args: reply });
    });
  },
  // The connection drops without a goodbye (the client reconnects and recovers).
  drop(cmd) {
    sockets.get(cmd.sock).io.engine.close();
  },
  close(cmd) {
    sockets.get(cmd.sock).disconnect();
  },
  state(cmd) {
    const socket = sockets.get(cmd.sock);
    out({ sock: cmd.sock, type: "state", req: cmd.req, connected: socket.connected, recovered: socket.recovered, transport: socket.io.engine?.transport?.name ?? null });
  },
};

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
    ops[cmd.op](cmd);
  } catch (err) {
    out({ type: "driver_error", message: String(err?.stack ?? err), line });
  }
});
rl.on("close", () => {
  for (const socket of sockets.values()) socket.disconnect();
  process.exit(0);
});
out({ type: "ready" });
