"""Stage `index`: the documents in `rag.docs` (default: this repo's docs/) -> models/docs.sqlite,
a full-text index of passages that `bardlet chat --docs` and `bardlet serve --docs` search.

Passages are counted in the pipeline's own tokens; reports/index.json counts files, passages
and files skipped (with the reason: binary, not UTF-8, an encrypted or image-only PDF, too big).
"""

from bardlet.config import load_params
from bardlet.files import write_json_atomic
from bardlet.retrieval.index import build_index
from bardlet.tokenizer import load_tokenizer
from stages.paths import DOCS_INDEX, REPORTS, TOKENIZER_DIR


def main() -> None:
    settings = load_params().rag
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    report = build_index(
        DOCS_INDEX,
        settings.docs,
        lambda text: len(tokenizer.encode(text)),
        tokenizer.hash,
        settings.passage_tokens,
        settings.overlap,
        int(settings.max_file_mb * 1e6),
        fresh=True,  # built beside, then renamed: never half an index
    )
    print(f"{DOCS_INDEX}: {report.summary()}")
    skipped = {reason: len(paths) for reason, paths in report.skipped.items()}
    numbers = {"files": report.added, "passages": report.passages, "bytes": report.bytes_read}
    write_json_atomic(REPORTS / "index.json", numbers | {"skipped": skipped})


if __name__ == "__main__":
    main()
