"""Stage `download`: fetch the pinned public sources into data/raw, checking every sha256."""

from bardlet.config import load_params
from bardlet.data.sources import OASST1_FULL, Source, fetch
from stages.paths import RAW


def main() -> None:
    params = load_params().download
    sources = [Source(**source.model_dump()) for source in params.sources]
    if params.oasst1_full:
        sources += [s for s in OASST1_FULL if s.name not in {x.name for x in sources}]
    for source in sources:
        path = fetch(source, RAW)
        print(f"{source.name}: {path} ({source.size:,} bytes, sha256 ok)")


if __name__ == "__main__":
    main()
