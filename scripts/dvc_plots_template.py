#!/usr/bin/env python3
"""Write .dvc/plots_offline.html: the page template `dvc plots show` fills, with the chart
library inside it, so the plots draw with no network.

DVC's own template loads Vega, Vega-Lite and Vega-Embed from a CDN: offline (or behind a
firewall) its page stays blank. This one inlines the same three libraries, bundled by the
`vl-convert-python` package (pinned in requirements.lock). `.dvc/config` points DVC at it
(`plots.html_template`), and the file is committed, so a fresh clone needs nothing else.

    .venv/bin/python scripts/dvc_plots_template.py     # after upgrading vl-convert-python

tests/test_dvc_views.py checks that the committed file is what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots_offline.html"
VEGA_LITE = "5.21"  # DVC writes Vega-Lite v5 specs
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")  # what DVC substitutes


def template() -> str:
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE).replace("</script", "<\\/script")
    for placeholder in PLACEHOLDERS:
        if placeholder in bundle:  # DVC would substitute inside the library
            raise SystemExit(f"the bundle contains DVC's placeholder {placeholder}")
    # `{scripts}` is left out on purpose: DVC would put its CDN <script> tags there.
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        "<title>bardlet: DVC plots</title>\n"
        "<script>\n(function () {\n" + bundle + "\n})();\n</script>\n"
        "<style>body { font-family: sans-serif; } table { border-spacing: 15px; }</style>\n"
        "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n"
    )


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.write_text(template(), encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
