"""Stage `download`: fetch the pinned public sources into data/raw, checking every sha256."""

from bardlet.config import load_params
from bardlet.data.sources import Source, fetch
from stages.paths import RAW


def main() -> None:
    params = load_params().download
    for source in params.sources:
        path = fetch(Source(**source.model_dump()), RAW)
        print(f"{source.name}: {path} ({source.size:,} bytes, sha256 ok)")


if __name__ == "__main__":
    main()
