"""Stage `download`: fetch the pinned public sources into data/raw, checking every sha256;
with `init: owner/name@revision`, that pretrained model into data/pretrained/hub/."""

from bardlet.config import init_folder, load_params
from bardlet.data.sources import OASST1_FULL, Source, fetch, fetch_pretrained
from stages.paths import RAW


def main() -> None:
    all_params = load_params()
    params = all_params.download
    if "@" in all_params.init and (folder := init_folder(all_params.init)) is not None:
        repo, revision = all_params.init.split("@")
        print(f"{all_params.init}: {fetch_pretrained(repo, revision, folder)}")
    sources = [Source(**source.model_dump()) for source in params.sources]
    if params.oasst1_full:
        sources += [s for s in OASST1_FULL if s.name not in {x.name for x in sources}]
    for source in sources:
        path = fetch(source, RAW)
        print(f"{source.name}: {path} ({source.size:,} bytes, sha256 ok)")


if __name__ == "__main__":
    main()
