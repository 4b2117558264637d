// bardlet's byte-level BPE and chat template in the browser: the same token ids as
// bardlet/tokenizer/bpe.py and bardlet/data/chat_template.py (tests/test_web_stage.py checks
// them in Chromium against Python on the tokenizer's test texts).
//
// bpe.json holds the pre-tokenizer pattern (Python `regex` syntax), the special tokens and the
// merges: merge i joins the pair merges[i] into token 256 + i. Encoding cuts text with the
// pattern, then in each chunk's UTF-8 bytes merges the leftmost lowest-rank pair until no
// pair is a merge.

// Python's pattern in JavaScript syntax: possessive quantifiers (`?+`, `++`, `*+`) become
// greedy ones (the same matches for bardlet's patterns: what follows them cannot match what
// they gave up), and a case-insensitive group `(?i:...)` spells out both cases.
export function jsPattern(pattern) {
  let out = "";
  let quantified = false; // the last thing written was a quantifier
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    const counted = /^\{\d+(,\d*)?\}/.exec(pattern.slice(i));
    if (c === "\\") {
      const escape = /^\\[pP]\{[^}]*\}/.exec(pattern.slice(i));
      const text = escape ? escape[0] : pattern.slice(i, i + 2);
      out += text;
      i += text.length - 1;
      quantified = false;
    } else if (c === "+" && quantified) {
      quantified = false; // a possessive marker: dropped
    } else if (counted) {
      out += counted[0];
      i += counted[0].length - 1;
      quantified = true;
    } else if (pattern.startsWith("(?i:", i)) {
      const end = groupEnd(pattern, i);
      out += "(?:" + caseless(pattern.slice(i + 4, end)) + ")";
      i = end;
      quantified = false;
    } else {
      out += c;
      quantified = "?*+".includes(c) && !"(|".includes(pattern[i - 1] ?? "(");
    }
  }
  return out;
}

function groupEnd(pattern, start) {
  let depth = 0;
  for (let i = start; i < pattern.length; i++) {
    if (pattern[i] === "\\") i++;
    else if (pattern[i] === "(") depth++;
    else if (pattern[i] === ")" && --depth === 0) return i;
  }
  throw new Error("unbalanced group in the tokenizer pattern");
}

function caseless(body) {
  let out = "";
  let inClass = false;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c === "\\") {
      out += body.slice(i, i + 2);
      i++;
    } else if (c === "[") {
      inClass = true;
      out += c;
    } else if (c === "]") {
      inClass = false;
      out += c;
    } else if (/[a-z]/i.test(c)) {
      const both = c.toLowerCase() + c.toUpperCase();
      out += inClass ? both : "[" + both + "]";
    } else {
      out += c;
    }
  }
  return out;
}

export class BPE {
  constructor(data) {
    if (data.format !== "bardlet-bpe") throw new Error("not a bardlet bpe.json");
    this.pattern = new RegExp(jsPattern(data.pattern), "gu");
    this.special = data.special_tokens; // name -> id
    this.ranks = new Map();
    this.vocab = [];
    for (let b = 0; b < 256; b++) this.vocab.push(Uint8Array.of(b));
    data.merges.forEach(([a, b], rank) => {
      this.ranks.set(a * 1048576 + b, rank);
      const joined = new Uint8Array(this.vocab[a].length + this.vocab[b].length);
      joined.set(this.vocab[a]);
      joined.set(this.vocab[b], this.vocab[a].length);
      this.vocab.push(joined);
    });
    const utf8 = new TextEncoder();
    for (const [name, id] of Object.entries(this.special)) this.vocab[id] = utf8.encode(name);
    this.cache = new Map();
    this.utf8 = utf8;
  }

  specialId(name) {
    const id = this.special[name];
    if (id === undefined) throw new Error("no special token " + name);
    return id;
  }

  // Token ids of `text`; special tokens' names encode as plain text.
  encode(text) {
    const ids = [];
    let last = 0;
    for (const match of text.matchAll(this.pattern)) {
      if (match.index > last) ids.push(...this.encodeChunk(text.slice(last, match.index)));
      if (match[0]) ids.push(...this.encodeChunk(match[0]));
      last = match.index + match[0].length;
    }
    if (last < text.length) ids.push(...this.encodeChunk(text.slice(last)));
    return ids;
  }

  encodeChunk(chunk) {
    const known = this.cache.get(chunk);
    if (known) return known;
    const ids = Array.from(this.utf8.encode(chunk));
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < ids.length; i++) {
        const rank = this.ranks.get(ids[i] * 1048576 + ids[i + 1]);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      ids.splice(best, 2, 256 + bestRank);
    }
    if (this.cache.size < 50000) this.cache.set(chunk, ids);
    return ids;
  }

  tokenBytes(id) {
    return this.vocab[id];
  }
}

// The chat template: <|bos|> [<|system|> text <|end|>] (<|role|> text <|end|>)... <|assistant|>
export function renderPrompt(bpe, messages, system) {
  const end = bpe.specialId("<|end|>");
  const ids = [bpe.specialId("<|bos|>")];
  const turns = system == null ? messages : [{ role: "system", content: system }, ...messages];
  for (const message of turns) {
    ids.push(bpe.specialId("<|" + message.role + "|>"), ...bpe.encode(message.content), end);
  }
  ids.push(bpe.specialId("<|assistant|>"));
  return ids;
}
