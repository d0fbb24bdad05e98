"""The documentation holds together: every relative link and image in README.md and docs/*.md
points at a file that exists, and every `#anchor` at a heading of that file (GitHub's slugs); and
the README stays short enough to read to the end."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 12_000

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target): the target up to a space or the closing parenthesis
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (a `#` in a bash block is no heading, and a
    link there no link)."""
    lines, fence = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links, `*` emphasis and code marks dropped),
    lower-cased, with everything but letters, digits, `_`, `-` and spaces removed and each space
    made a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = CODE_SPAN.sub(lambda m: m.group(2), text)
    text = re.sub(r"<[^>]+>", "", text).replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    out = []
    for line in prose(path):
        line = CODE_SPAN.sub("", line)  # `[x](y)` in code is no link
        out += LINK.findall(line)
        m = REFERENCE.match(line)
        if m:
            out.append(m.group(1))
    return out


def broken(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file)).resolve() if file else path
        where = f"{path.relative_to(ROOT)}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif not dest.is_relative_to(ROOT):
            problems.append(f"{where}: outside the repository")
        elif anchor and dest.suffix.lower() == ".md" and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def test_slugs_follow_githubs_rules():
    assert slug("What to expect") == "what-to-expect"
    assert slug("The seed's full configuration (for a GPU)") == "the-seeds-full-configuration-for-a-gpu"
    assert slug("Divergence: rollback") == "divergence-rollback"
    assert slug("Several devices (tf.distribute)") == "several-devices-tfdistribute"
    assert slug("Experiments: learning rate x warp schedule") == "experiments-learning-rate-x-warp-schedule"
    assert slug("`train.init_from` and *freeze*") == "traininit_from-and-freeze"
    assert slug("A → B — and back") == "a--b--and-back"
    assert slug("[Marks](MARKS.md) of content") == "marks-of-content"


def test_the_checker_finds_what_is_broken(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("# A\n\n## Two words\n\n## Two words\n")
    (tmp_path / "README.md").write_text(
        "# Top\n\n[ok](docs/A.md#two-words-1) [self](#top) ![pic](docs/none.png)\n"
        "[gone](docs/A.md#three) [web](https://example.com/x#y) `[code](nowhere.md)`\n\n"
        "```bash\n# not a heading\n[not](a-link.md)\n```\n")
    problems = broken(tmp_path / "README.md")
    assert len(problems) == 2, problems
    assert "no such file docs/none.png" in problems[0] and "no heading #three" in problems[1]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc):
    assert links(doc) or doc.name != "README.md", "the README links to nothing?"
    problems = broken(doc)
    assert not problems, "\n".join(problems)


def test_the_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, (f"README.md is {size} bytes, over {README_MAX_BYTES}: move detail into a "
                                      "guide under docs/ and link it")


def test_the_readmes_two_commands_are_the_ones_ci_runs():
    """`.ci/run` runs the README's two commands as they are written there."""
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    one = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && dvc repro'
    two = ". .venv/bin/activate && python -m pytest"
    assert one in readme and two in readme
    assert one.replace("pip install -e", "pip install -q -e") in ci and two in ci
