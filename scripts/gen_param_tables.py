"""Print (or, with --write, rewrite in docs/parameters.md) the parameter tables, from the one table in
fmnist_exp/params/table.py; tests/test_project.py checks that the page holds what this prints.

    python scripts/gen_param_tables.py --write
"""

import sys
from pathlib import Path

from fmnist_exp.params import table as C

PAGE = Path(__file__).resolve().parent.parent / "docs" / "parameters.md"
BEGIN, END = "<!-- params:begin -->", "<!-- params:end -->"


def table(params: list[C.Param]) -> str:
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for p in params:
        if p.default is None:
            d = "not given"
        else:
            d = "''" if p.default == "" else (str(p.default).lower() if isinstance(p.default, bool) else p.default)
            d = f"`{d}`"
        rows.append(f"| `{p.name}` | {d} | {p.help} |")
    return "\n".join(rows)


def tables() -> str:
    order = ("tune", *C.FAMILIES, "register", "launch", "predict", "reproduce", "dashboard", "storage-proxy")
    return "\n\n".join(f"### {name}\n\n{section(name)}" for name in order)


def section(name: str) -> str:
    if name == "launch":  # its own two; the tune parameters are the table above
        return table(C.LAUNCH_OWN_PARAMS) + (
            "\n\nand every `tune` parameter above: the launcher creates the study with them and passes those given "
            "to each worker (`study` and `family` excepted: the study records them).")
    return table(C.command_params(name))


def write() -> None:
    page = PAGE.read_text()
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(f"{head}{BEGIN}\n{tables()}\n{END}{tail}")


if __name__ == "__main__":
    write() if "--write" in sys.argv[1:] else print(tables())
