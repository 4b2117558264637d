// The in-browser chatbot: onnxruntime-web (WebAssembly) runs bardlet's exported model.onnx
// with its KV cache, the tokenizer and chat template are bpe.js, and nothing is fetched from
// anywhere but this folder. Served by any static web server.
import * as ort from "./ort/ort.wasm.min.mjs";
import { BPE, renderPrompt } from "./bpe.js";

const $ = (id) => document.getElementById(id);
ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
// Threads need a cross-origin isolated page (COOP/COEP headers); otherwise one thread.
const requested = Number(new URLSearchParams(location.search).get("threads") || 2);
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.max(1, requested) : 1;

export class Model {
  static async load(base = ".") {
    const started = performance.now();
    const [info, tokenizer] = await Promise.all(
      ["model.json", "bpe.json"].map((name) => fetch(`${base}/${name}`).then((r) => r.json())),
    );
    const session = await ort.InferenceSession.create(`${base}/${info.onnx}`, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
    const model = new Model(session, info, new BPE(tokenizer));
    model.loadSeconds = (performance.now() - started) / 1000;
    return model;
  }

  constructor(session, info, bpe) {
    Object.assign(this, { session, info, bpe });
    this.stops = new Set(Object.values(bpe.special));
  }

  emptyCache() {
    const { n_layer: layers, cache_heads: heads, head_dim: dim } = this.info;
    const past = {};
    for (let i = 0; i < layers; i++) {
      for (const kind of ["key", "value"]) {
        past[`past.${i}.${kind}`] = new ort.Tensor("float32", new Float32Array(0), [1, heads, 0, dim]);
      }
    }
    return past;
  }

  // Token ids after `prompt`, one by one (an async generator), until a stop token (any special
  // token unless `stops` says otherwise), `max` tokens or the context's end. temperature 0 is
  // greedy; otherwise top-k then a draw.
  async *generate(prompt, max, { temperature = 0, topK = 40, stops = this.stops } = {}) {
    let past = this.emptyCache();
    let ids = prompt;
    let total = 0;
    const budget = Math.min(max, this.info.block_size - prompt.length);
    for (let step = 0; step < budget; step++) {
      total += ids.length;
      const feeds = {
        ...past,
        input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]),
        attention_mask: new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
      };
      const out = await this.session.run(feeds);
      const vocab = out.logits.dims[2];
      const logits = out.logits.data.subarray((ids.length - 1) * vocab, ids.length * vocab);
      const token = temperature > 0 ? draw(logits, temperature, topK) : argmax(logits);
      for (const old of Object.values(past)) old.dispose?.();
      past = {};
      for (let i = 0; i < this.info.n_layer; i++) {
        for (const kind of ["key", "value"]) past[`past.${i}.${kind}`] = out[`present.${i}.${kind}`];
      }
      out.logits.dispose?.();
      if (stops.has(token)) return;
      yield token;
      ids = [token];
    }
  }
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function draw(logits, temperature, topK) {
  const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  const kept = topK > 0 ? order.slice(0, topK) : order;
  const top = logits[kept[0]];
  const weights = kept.map((i) => Math.exp((logits[i] - top) / temperature));
  let r = Math.random() * weights.reduce((a, b) => a + b, 0);
  for (let i = 0; i < kept.length; i++) if ((r -= weights[i]) <= 0) return kept[i];
  return kept[kept.length - 1];
}

// ---------------------------------------------------------------- the page

const history = [];

async function send(model, text) {
  history.push({ role: "user", content: text });
  const said = document.createElement("div");
  said.className = "msg user";
  said.textContent = text;
  const bubble = document.createElement("div");
  bubble.className = "msg assistant streaming";
  $("log").append(said, bubble);
  $("send").disabled = true;
  const prompt = renderPrompt(model.bpe, history.slice(-8), model.info.system);
  const decoder = new TextDecoder();
  let reply = "";
  let count = 0;
  const started = performance.now();
  const settings = { temperature: Number($("temperature").value), topK: 40 };
  for await (const token of model.generate(prompt, Number($("max-tokens").value), settings)) {
    reply += decoder.decode(model.bpe.tokenBytes(token), { stream: true });
    bubble.textContent = reply;
    count += 1;
  }
  reply += decoder.decode();
  bubble.textContent = reply;
  bubble.classList.remove("streaming");
  const seconds = (performance.now() - started) / 1000;
  $("stats").textContent = `${count} tokens in ${seconds.toFixed(2)} s · ${(count / seconds).toFixed(0)} tokens/s · ${ort.env.wasm.numThreads} thread(s)`;
  history.push({ role: "assistant", content: reply });
  $("send").disabled = false;
}

async function main() {
  try {
    const model = await Model.load();
    window.bardlet = { model, renderPrompt };
    const { n_layer: layers, n_embd: width } = model.info;
    $("status").textContent = `${layers} layers × ${width} wide, loaded in ${model.loadSeconds.toFixed(2)} s · runs in this browser`;
    $("send").disabled = false;
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("input").value.trim();
      if (!text || $("send").disabled) return;
      $("input").value = "";
      send(model, text);
    });
    $("input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
  } catch (error) {
    $("status").textContent = "could not load the model: " + error.message;
    throw error;
  }
}

main();
