// Helios live: play a realtime stream from either engine as it arrives and send live prompt changes.
//   SGLang    WS /v1/realtime_video/generate, msgpack: {"type": "init", ...} then
//             {"type": "event", "kind": "prompt", "event_id", "payload": {"prompt", "transition_chunks"}};
//             frames arrive as frame batches (raw RGB, or JPEG/WebP with realtime_output_format)
//   vLLM-Omni WS /v1/realtime/video, JSON: {"type": "session.start", ...} then
//             {"type": "session.interaction", "interaction": {"event_id", "event": {"prompt"}, "transition_chunks"}};
//             video arrives as fragmented MP4, played through MediaSource
// window.heliosLive holds what the page has seen: chunks (index, frames, started event ids), the
// changes sent and the chunk each started at, errors, frames shown.
"use strict";

const $ = (id) => document.getElementById(id);
const live = { engine: null, ws: null, chunks: [], changes: [], errors: [], shown: 0, ended: null };
window.heliosLive = live;

const query = new URLSearchParams(location.search);
for (const name of ["engine", "server", "prompt", "options"]) if (query.has(name)) $(name).value = query.get(name);

function show() {
  const lines = [`${live.engine ?? "idle"}${live.ended ? ` - ended: ${live.ended}` : ""}`, `frames shown: ${live.shown}`];
  for (const c of live.chunks) lines.push(`chunk ${c.index}: ${c.frames} frames${c.events.length ? `, started change ${c.events.join(", ")}` : ""}`);
  for (const c of live.changes) lines.push(`change ${c.event_id} "${c.prompt}": ${c.started === null ? "queued" : `from chunk ${c.started}`}`);
  $("status").textContent = lines.join("\n");
  $("errors").textContent = live.errors.join("\n");
}

function fail(message) {
  live.errors.push(message);
  show();
}

function chunk(index) {
  if (!live.chunks[index]) live.chunks[index] = { index, frames: 0, events: [] };
  return live.chunks[index];
}

function started(index, eventIds) {
  const c = chunk(index);
  for (const id of eventIds) {
    c.events.push(id);
    const change = live.changes.find((x) => String(x.event_id) === String(id));
    if (change) change.started = index;
  }
  show();
}

function ended(why) {
  live.ended = why;
  $("start").disabled = false;
  $("stop").disabled = $("send").disabled = true;
  show();
}

// -- SGLang: frame batches drawn on a canvas at the stream's frame rate -----------------------------

function sglang(server, start) {
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  canvas.hidden = false;
  const queue = [];
  const fps = start.fps || 24;
  let closed = false;
  const timer = setInterval(() => {
    const frame = queue.shift();
    if (!frame) {
      if (closed) clearInterval(timer);  // every frame that arrived has been shown
      return;
    }
    if (canvas.width !== frame.width || canvas.height !== frame.height) [canvas.width, canvas.height] = [frame.width, frame.height];
    if (frame instanceof ImageData) context.putImageData(frame, 0, 0); else context.drawImage(frame, 0, 0);
    live.shown += 1;
    show();
  }, 1000 / fps);

  const frames = async (batch, payload) => {
    chunk(batch.chunk_index).frames += batch.num_frames;
    if (batch.content_type === "application/x-raw-rgb") {
      const size = batch.width * batch.height;
      for (let f = 0; f < batch.num_frames; f++) {
        const rgba = new Uint8ClampedArray(size * 4);
        const rgb = payload.subarray(f * size * 3, (f + 1) * size * 3);
        for (let p = 0; p < size; p++) {
          rgba[4 * p] = rgb[3 * p]; rgba[4 * p + 1] = rgb[3 * p + 1]; rgba[4 * p + 2] = rgb[3 * p + 2]; rgba[4 * p + 3] = 255;
        }
        queue.push(new ImageData(rgba, batch.width, batch.height));
      }
    } else {  // JPEG / WebP previews: one encoded image per frame
      let at = 0;
      for (const length of batch.payload_lengths) {
        queue.push(await createImageBitmap(new Blob([payload.subarray(at, at + length)], { type: batch.content_type })));
        at += length;
      }
    }
    show();
  };

  const ws = new WebSocket(`${server}/v1/realtime_video/generate`);
  ws.binaryType = "arraybuffer";
  let header = null;  // a large batch comes as a header, then its raw bytes in the next message
  ws.onopen = () => ws.send(msgpack.encode({ type: "init", ...start }));
  ws.onmessage = (event) => {
    if (header) {
      frames(header, new Uint8Array(event.data));
      header = null;
      return;
    }
    const message = msgpack.decode(event.data);
    if (message.type === "frame_batch_header") header = message;
    else if (message.type === "frame_batch") frames(message, message.payload);
    else if (message.type === "chunk_stats") started(message.chunk_index, message.event_id == null ? [] : [message.event_id]);
    else if (message.type === "error") fail(message.content);
  };
  ws.onclose = (event) => {
    closed = true;
    ended(event.reason || `closed (${event.code})`);
  };
  return {
    ws,
    change: (id, prompt, transition) =>
      ws.send(msgpack.encode({ type: "event", kind: "prompt", event_id: id, payload: { prompt, transition_chunks: transition } })),
    stop: () => ws.close(1000, "stopped by the page"),
  };
}

// -- vLLM-Omni: fragmented MP4 through MediaSource ---------------------------------------------------

function avcCodec(bytes) {
  // the H.264 profile/level of the init segment's avcC box, as MediaSource wants it
  for (let i = 0; i + 8 < bytes.length; i++) {
    if (bytes[i] === 0x61 && bytes[i + 1] === 0x76 && bytes[i + 2] === 0x63 && bytes[i + 3] === 0x43) {
      const hex = (b) => b.toString(16).padStart(2, "0");
      return `avc1.${hex(bytes[i + 5])}${hex(bytes[i + 6])}${hex(bytes[i + 7])}`;
    }
  }
  return "avc1.42e01e";
}

function vllm(server, start) {
  const video = $("video");
  video.hidden = false;
  const source = new MediaSource();
  video.src = URL.createObjectURL(source);
  const pending = [];
  let buffer = null;
  let opening = false;
  let metadata = null;
  const append = () => {
    if (buffer && !buffer.updating && pending.length) buffer.appendBuffer(pending.shift());
  };
  const counted = () => {
    live.shown += 1;
    show();
    video.requestVideoFrameCallback(counted);
  };
  video.requestVideoFrameCallback(counted);

  const ws = new WebSocket(`${server}/v1/realtime/video`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "session.start", ...start }));
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") {
      const bytes = new Uint8Array(event.data);
      if (!opening) {  // the first bytes hold the init segment: its codec opens the buffer
        opening = true;
        const open = () => {
          buffer = source.addSourceBuffer(`video/mp4; codecs="${avcCodec(bytes)}"`);
          buffer.mode = "sequence";
          buffer.addEventListener("updateend", append);
          append();
        };
        if (source.readyState === "open") open(); else source.addEventListener("sourceopen", open, { once: true });
      }
      pending.push(bytes);
      append();
      if (metadata && metadata.kind === "media") {
        chunk(metadata.generation_chunk_index).frames += metadata.num_frames;
        started(metadata.generation_chunk_index, metadata.started_event_ids);
        video.play().catch(() => {});
      }
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "video.chunk_metadata") metadata = message;
    else if (message.type === "error") fail(message.message);
    else if (message.type === "session.done") ended("session.done");
  };
  ws.onclose = (event) => { if (!live.ended) ended(event.reason || `closed (${event.code})`); };
  return {
    ws,
    change: (id, prompt, transition) =>
      ws.send(JSON.stringify({ type: "session.interaction", interaction: { event_id: String(id), event: { prompt }, transition_chunks: transition } })),
    stop: () => ws.send(JSON.stringify({ type: "session.stop" })),
  };
}

// -- controls ---------------------------------------------------------------------------------------

let session = null;

$("start").onclick = () => {
  let options;
  try {
    options = JSON.parse($("options").value || "{}");
  } catch (error) {
    return fail(`request fields: not JSON: ${error.message}`);
  }
  Object.assign(live, { engine: $("engine").value, chunks: [], changes: [], errors: [], shown: 0, ended: null });
  const server = $("server").value.replace(/\/+$/, "");
  const start = { prompt: $("prompt").value, ...options };
  session = live.engine === "sglang" ? sglang(server, start) : vllm(server, start);
  live.ws = session.ws;
  $("start").disabled = true;
  $("stop").disabled = $("send").disabled = false;
  show();
};

$("stop").onclick = () => session && session.stop();

$("send").onclick = () => {
  const prompt = $("change").value.trim();
  if (!prompt) return fail("new prompt: empty");
  const transition = Number($("transition").value);
  const id = live.changes.length + 1;
  live.changes.push({ event_id: id, prompt, started: null });
  session.change(id, prompt, transition);
  show();
};

show();
