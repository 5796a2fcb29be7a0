#!/usr/bin/env python
"""Write the README's settings tables from the recipes' own settings (so they cannot drift).

    python bin/settings_tables.py          # rewrite README.md between the settings markers
    python bin/settings_tables.py --check  # exit 1 if README.md is out of date (tests run this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- settings:begin (bin/settings_tables.py writes this part) -->", "<!-- settings:end -->"


def tables() -> str:
    from mtd_cache.core.settings import settings_table
    from mtd_cache.students.recipes import get_recipe
    from mtd_cache.teachers.text import TextDumpSettings, TextTeacherSettings
    from mtd_cache.teachers.vision import ImageDumpSettings, ImageTeacherSettings

    parts = [
        ("Image students (`resnet8` ... `resnet1202`, `tv:NAME`): recipe `image_kd`", get_recipe("resnet20").Settings),
        ("Text KD (`hf:NAME_OR_PATH`): recipe `text_kd`", get_recipe("hf:x").Settings),
        ("DistilBERT (`distilbert`)", get_recipe("distilbert").Settings),
        ("TinyBERT (`tinybert`): `ild_*` are stage 1's (the intermediate-layer distillation), `epochs` and `lr` "
         "stage 2's", get_recipe("tinybert").Settings),
        ("Text teachers (`mtd-cache teachers`, `--set`)", TextTeacherSettings),
        ("Image teachers (`mtd-cache teachers`, `--set`)", ImageTeacherSettings),
        ("Text dump (`mtd-cache dump`, `--set`)", TextDumpSettings),
        ("Image dump (`mtd-cache dump`, `--set`)", ImageDumpSettings),
    ]
    out = [BEGIN, ""]
    for title, cls in parts:
        out += [f"#### {title}", "", settings_table(cls)]
    return "\n".join(out) + END


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"settings_tables: {README} has no {BEGIN} ... {END} section", file=sys.stderr)
        return 1
    new = text[:text.index(BEGIN)] + tables() + text[text.index(END) + len(END):]
    if args.check:
        if new != text:
            print("settings_tables: README.md's settings tables are out of date: run python bin/settings_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
