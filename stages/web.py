"""Stage `web`: your chatbot in a browser, no server -> models/web/

A static folder any web server can serve (`python -m http.server -d models/web`): the page
and its scripts (bardlet/web/: a JavaScript port of bardlet's BPE and chat template, and the
generation loop with the KV cache), the exported model.onnx and model.int8.onnx, bpe.json, a
model.json the page reads, and onnxruntime-web's WebAssembly runtime in ort/. The three
runtime files are fetched like the pipeline's data: from jsDelivr's copy of the npm package,
or from BARDLET_DATA_MIRROR at the same relative paths, each checked against its sha256.
Nothing is fetched from the network when the page runs.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from bardlet.data.sources import Source, fetch
from bardlet.files import new_folder, write_json_atomic, write_text_atomic
from bardlet.runtime.conversation import load_styles
from bardlet.runtime.session import METADATA_KEY, TOKENIZER_FILE, cache_shape
from stages.paths import ONNX_DIR

WEB_DIR = Path("models/web")
PAGE = Path(__file__).resolve().parents[1] / "bardlet" / "web"
ORT_WEB = "onnxruntime-web@1.30.0"
ORT_FILES = {  # file: (bytes, sha256) of the npm package's dist/ files
    "ort.wasm.min.mjs": (
        50_126,
        "219e6a1fc8a9938268d18efca3c91d310bd2f4a59bbd13744df5b2b7fc6cee3b",
    ),
    "ort-wasm-simd-threaded.mjs": (
        24_381,
        "e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b",
    ),
    "ort-wasm-simd-threaded.wasm": (
        14_239_897,
        "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2",
    ),
}
NO_BPE = """# models/web

The exported model uses a pretrained model's own tokenizer (tokenizer.json), and the page's
JavaScript tokenizer is a port of bardlet's BPE (bpe.json) only: no in-browser page was built.
"""


def ort_sources() -> list[Source]:
    return [
        Source(
            name=f"onnxruntime-web {name}",
            path=f"npm/{ORT_WEB}/dist/{name}",
            url=f"https://cdn.jsdelivr.net/npm/{ORT_WEB}/dist/{name}",
            sha256=sha256,
            size=size,
        )
        for name, (size, sha256) in ORT_FILES.items()
    ]


def model_info(onnx_dir: Path) -> dict[str, Any]:
    """What the page needs to know about the graph: its cache's shape and its context."""
    proto = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    config = json.loads(meta[METADATA_KEY])["model"]
    heads, head_dim = cache_shape(config)
    return {
        "onnx": "model.onnx",
        "n_layer": config["n_layer"],
        "cache_heads": heads,
        "head_dim": head_dim,
        "block_size": config["block_size"],
        "n_embd": config["n_embd"],
        "system": load_styles(onnx_dir / "model.onnx")["default"].system,
    }


def build_web(onnx_dir: Path, web_dir: Path, mirror: str | None = None) -> Path:
    """Write `web_dir` (whole, or not at all) from the exported model in `onnx_dir`."""
    with new_folder(web_dir) as folder:
        if not (onnx_dir / TOKENIZER_FILE).exists():
            write_text_atomic(folder / "README.md", NO_BPE)
            return web_dir
        for name in ("index.html", "chat.js", "bpe.js", "style.css"):
            shutil.copy2(PAGE / name, folder / name)
        for name in ("model.onnx", "model.int8.onnx", TOKENIZER_FILE):
            shutil.copy2(onnx_dir / name, folder / name)
        write_json_atomic(folder / "model.json", model_info(onnx_dir))
        (folder / "ort").mkdir()
        with tempfile.TemporaryDirectory() as fetched:
            for source in ort_sources():
                path = fetch(source, Path(fetched), mirror, progress=False)
                shutil.copy2(path, folder / "ort" / Path(source.path).name)
    return web_dir


def main() -> None:
    build_web(ONNX_DIR, WEB_DIR)
    total = sum(p.stat().st_size for p in WEB_DIR.rglob("*") if p.is_file())
    print(f"{WEB_DIR}: {total / 1e6:.1f} MB; serve it with `python -m http.server -d {WEB_DIR}`")


if __name__ == "__main__":
    main()
