"""The code maps match the tree: every module of the package is named, with what it owns, in the
README's code map or, for bench/, finetune/, experiments/ and privacy/, in its package docstring (the README
names those packages once)."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fedbiobert"
README = PACKAGE.parent / "README.md"
MAPPED_BY_PACKAGE = ("bench", "finetune", "experiments", "privacy")  # a package whose docstring maps its modules


def _modules() -> list[Path]:
    return sorted(path.relative_to(PACKAGE) for path in PACKAGE.rglob("*.py")
                  if path.name not in ("__init__.py", "__main__.py"))


def _readme_code_map() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## Code map"):text.index("\n## ", text.index("## Code map") + 1)]


def _names_in_readme(relative: Path, code_map: str) -> bool:
    """`fedbiobert/x/y.py`, or `y.py` in the indented list under `fedbiobert/x/` (or `y.py` among
    several files named on one line of that list)."""
    if f"`fedbiobert/{relative.as_posix()}`" in code_map:
        return True
    section = re.search(rf"^- `fedbiobert/{re.escape(relative.parent.as_posix())}/`.*?(?=^- |\Z)", code_map,
                        re.M | re.S)
    return section is not None and f"`{relative.name}`" in section.group(0)


def test_every_module_is_in_a_code_map():
    code_map = _readme_code_map()
    missing = []
    for relative in _modules():
        top = relative.parts[0]
        if top in MAPPED_BY_PACKAGE:
            docstring = ast.get_docstring(ast.parse((PACKAGE / top / "__init__.py").read_text())) or ""
            # the file's name, or its stem opening a line of the list ("    matrix   the runs: ...")
            found = relative.name in docstring or re.search(rf"^\s*-?\s*`?{relative.stem}\b", docstring, re.M)
        else:
            found = _names_in_readme(relative, code_map)
        if not found:
            missing.append(relative.as_posix())
    assert not missing, f"modules missing from the code maps: {missing}"


def test_the_code_map_names_no_module_that_is_gone():
    named = re.findall(r"`(fedbiobert/[\w/]+\.py)`", _readme_code_map())
    assert named and all((PACKAGE.parent / path).is_file() for path in named), named
