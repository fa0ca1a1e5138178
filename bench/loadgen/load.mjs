// A load phase of a worker thread (worker.mjs): its senders send typing:start or
// message:send at a steady rate; every frame its clients get is matched and timed (the
// matching: loadgen.mjs). `ctx` is the worker's state.
import { nowMs } from "./stats.mjs";

export function startLoad(ctx, job) {
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
    const client = ctx.byIdx.get(c.sender);
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
            if (s.client.sio) ctx.send(s.client, "typing:start", undefined, { conversationId: convs[s.ci].conv });
            else
              s.client.ws.send(
                `{"event":"typing:start","data":{"conversationId":"${convs[s.ci].conv}"}}`,
              );
          } else {
            const id = `m${ctx.threadIndex}-${ctx.nextId++}`;
            const content = ts.toFixed(3) + " " + pad;
            ctx.pending.set(id, {
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
            ctx.send(s.client, "message:send", id, {
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
  ctx.lag.reset();
  ctx.load = { kind, onEvent, onTyping, st };
  return new Promise((resolve) => {
    setTimeout(
      () => {
        if (timer !== null) clearInterval(timer);
        ctx.load = null;
        // Replies that never came are failed acks.
        let lostAcks = 0;
        for (const [id] of ctx.pending) {
          if (id.startsWith("m")) {
            ctx.pending.delete(id);
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
          lagP99Ms: ctx.lag.percentile(99) / 1e6,
          lagMaxMs: ctx.lag.max / 1e6,
        });
      },
      Math.max(0, t0 - nowMs()) + durationMs + drainMs,
    );
  });
}
